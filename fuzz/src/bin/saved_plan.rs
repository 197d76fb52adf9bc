//! AFL++ target `saved_plan`: see [`vakt_fuzz::run_saved_plan`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vakt_fuzz::run_saved_plan(data);
    });
}

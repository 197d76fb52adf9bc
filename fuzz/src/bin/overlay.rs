//! AFL++ target `overlay`: see [`vakt_fuzz::run_overlay`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vakt_fuzz::run_overlay(data);
    });
}

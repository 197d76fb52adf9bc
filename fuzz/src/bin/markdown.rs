//! AFL++ target `markdown`: see [`vakt_fuzz::run_markdown`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vakt_fuzz::run_markdown(data);
    });
}

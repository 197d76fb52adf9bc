//! AFL++ target `snippets`: see [`vakt_fuzz::run_snippets`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vakt_fuzz::run_snippets(data);
    });
}

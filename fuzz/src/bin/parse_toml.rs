//! AFL++ target `parse_toml`: see [`vakt_fuzz::run_parse_toml`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vakt_fuzz::run_parse_toml(data);
    });
}

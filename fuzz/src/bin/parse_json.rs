//! AFL++ target `parse_json`: see [`vakt_fuzz::run_parse_json`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vakt_fuzz::run_parse_json(data);
    });
}

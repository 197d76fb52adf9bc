//! AFL++ target `parse_yaml`: see [`vakt_fuzz::run_parse_yaml`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vakt_fuzz::run_parse_yaml(data);
    });
}

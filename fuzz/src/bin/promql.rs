//! AFL++ target `promql`: see [`vakt_fuzz::run_promql`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vakt_fuzz::run_promql(data);
    });
}

//! AFL++ target `logql`: see [`vakt_fuzz::run_logql`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vakt_fuzz::run_logql(data);
    });
}

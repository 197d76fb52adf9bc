//! AFL++ target `backup`: see [`vakt_fuzz::run_backup`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vakt_fuzz::run_backup(data);
    });
}

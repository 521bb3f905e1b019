//! The server's frame reader on arbitrary bytes, cut into arbitrary pieces:
//! it must hand out messages and at most one violation, never panic, never
//! hand out anything after a violation, and never keep more than a frame's
//! worth of bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::server::frames::FrameReader;

/// Small, so the limit paths are reached.
const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the input is cut, the rest is the stream.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(cut).max(1);
    let mut reader = FrameReader::new(LIMIT);
    let mut broken = false;
    for chunk in stream.chunks(piece) {
        reader.feed(chunk);
        while let Some(item) = reader.take() {
            assert!(!broken, "an item after the violation");
            if let Err(violation) = item {
                assert!([1002, 1007, 1009].contains(&violation.close_code()));
                broken = true;
            }
        }
    }
});

//! Bytes off the wire, through the frame codec and the message decoder, as `net` reads
//! them: whatever arrives, decoding ends in a message or an error, never a panic, and
//! never allocates what a length prefix merely claims.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sync_core::protocol::{MAX_FRAME_BYTES, Message};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

fuzz_target!(|data: &[u8]| {
    let mut codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        if let Ok(message) = Message::decode(&frame) {
            // What decodes re-encodes to something that decodes to the same message.
            assert_eq!(Message::decode(&message.encode()).ok(), Some(message));
        }
    }
    let _ = Message::decode(data);
});

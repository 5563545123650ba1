//! Split frames: round trips in every cut of the stream, parts delivered as
//! buffers of their own, and lying tables or truncated parts as errors.

use super::*;

/// A head of 37 bytes and parts of 0, 4, 8 KiB + 4 and 12 bytes.
fn sample() -> (Vec<u8>, Vec<Vec<u32>>) {
    let head: Vec<u8> = (0..37u32).map(|i| (i * 13 % 251) as u8).collect();
    let parts =
        vec![vec![], vec![0xDEAD_BEEF], (0..2049u32).map(|i| i.wrapping_mul(2_654_435_761)).collect(), vec![1, 2, 3]];
    (head, parts)
}

fn bytes_of(words: &[u32]) -> Bytes {
    Bytes::from(words.iter().flat_map(|w| w.to_ne_bytes()).collect::<Vec<u8>>())
}

fn wire(head: &[u8], parts: &[Vec<u32>]) -> Vec<u8> {
    let head = vec![Bytes::copy_from_slice(&head[..5]), Bytes::copy_from_slice(&head[5..])];
    Outbound::split(head, parts.iter().map(|p| bytes_of(p)).collect()).unwrap().with_header().concat()
}

/// Every payload byte of the wire after the header, with the table's words replaced.
fn with_table(head_len: u64, lens: &[u64], body: &[u8]) -> Vec<u8> {
    let mut payload: Vec<u8> = [head_len, lens.len() as u64].iter().chain(lens).flat_map(|w| w.to_le_bytes()).collect();
    payload.extend_from_slice(body);
    let mut out = (payload.len() as u64 | SPLIT).to_le_bytes().to_vec();
    out.extend(payload);
    out
}

#[test]
fn split_frames_round_trip_in_every_cut_of_the_stream() {
    let (head, parts) = sample();
    let wire = wire(&head, &parts);
    let mut cuts: Vec<usize> = (0..80).collect();
    cuts.extend([100, 4000, 4001, 4002, 4003, 8000, wire.len() - 13, wire.len() - 1, wire.len()]);
    for cut in cuts {
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut frames = Vec::new();
        decoder.feed(&wire[..cut], &mut |f| frames.push(f)).unwrap();
        decoder.feed(&wire[cut..], &mut |f| frames.push(f)).unwrap();
        decoder.finish().unwrap();
        assert_eq!(frames.len(), 1, "cut {cut}");
        assert!(frames[0].is_split());
        assert_eq!(frames[0].as_slice(), &head[..], "cut {cut}");
        assert_eq!(frames[0].parts(), &parts[..], "cut {cut}");
        assert_eq!(frames[0].as_ptr() as usize % 16, 0);
    }
}

#[test]
fn odd_sized_input_pieces_and_frames_around_a_split_one() {
    let (head, parts) = sample();
    let mut stream = encode_frame(b"before");
    stream.extend(wire(&head, &parts));
    stream.extend(encode_frame(b"after"));
    for piece in [1, 3, 7, 4096] {
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut frames = Vec::new();
        stream.chunks(piece).for_each(|c| decoder.feed(c, &mut |f| frames.push(f)).unwrap());
        decoder.finish().unwrap();
        let plain: Vec<bool> = frames.iter().map(Frame::is_split).collect();
        assert_eq!(plain, [false, true, false]);
        assert_eq!((frames[0].as_slice(), frames[2].as_slice()), (&b"before"[..], &b"after"[..]));
        let (got_head, got_parts) = frames.swap_remove(1).into_split();
        assert_eq!((got_head.as_slice(), got_parts), (&head[..], parts.clone()));
    }
}

#[test]
fn parts_arrive_in_buffers_of_exactly_their_size() {
    let (head, parts) = sample();
    let frames = decode_all(&wire(&head, &parts), 1 << 20).unwrap();
    for (got, sent) in frames[0].parts().iter().zip(&parts) {
        assert_eq!(got.len(), sent.len());
        assert_eq!(got.capacity(), sent.len(), "a part was grown, so it moved while being filled");
    }
}

#[test]
fn a_split_frame_of_nothing_is_a_split_frame() {
    let wire = Outbound::split(Vec::new(), Vec::new()).unwrap().with_header().concat();
    let frames = decode_all(&wire, 64).unwrap();
    assert!(frames[0].is_split() && frames[0].is_empty() && frames[0].parts().is_empty());
}

#[test]
fn parts_that_are_not_words_are_refused_when_sending() {
    let err = Outbound::split(vec![Bytes::from_static(b"head")], vec![Bytes::new(), Bytes::from_static(b"odd")]);
    assert!(matches!(err, Err(Error::PartNotWords { index: 1, len: 3 })), "{err:?}");
    let err = Outbound::split(Vec::new(), vec![Bytes::new(); parts::MAX_PARTS + 1]);
    assert!(matches!(err, Err(Error::TooManyParts { .. })), "{err:?}");
}

#[test]
fn lying_part_tables_are_protocol_errors() {
    let body = [7u8; 24];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("parts longer than the frame", with_table(8, &[12, 8], &body)),
        ("parts shorter than the frame", with_table(8, &[8], &body)),
        ("head longer than the frame", with_table(1 << 40, &[], &body)),
        ("a part not of whole words", with_table(10, &[14], &body)),
        ("more parts than bytes", [24 | SPLIT, 0, 1000, 0].iter().flat_map(|w| w.to_le_bytes()).collect()),
        ("more parts than allowed", with_table(0, &vec![0; parts::MAX_PARTS + 1], &[])),
        ("lengths that overflow", with_table(8, &[u64::MAX - 3, 20], &body)),
        ("a frame too short for the table", (8 | SPLIT).to_le_bytes().into_iter().chain([0; 8]).collect()),
    ];
    for (what, wire) in cases {
        let err = decode_all(&wire, 1 << 24).expect_err(what);
        assert!(matches!(&err, Error::Protocol(m) if m.contains("split frame")), "{what}: {err}");
    }
}

#[test]
fn a_truncated_part_is_reported_with_its_sizes() {
    let (head, parts) = sample();
    let wire = wire(&head, &parts);
    for end in [HEADER_LEN + 3, HEADER_LEN + 40, wire.len() - 5, wire.len() - 1] {
        let err = decode_all(&wire[..end], 1 << 20).unwrap_err();
        let expected = wire.len() as u64;
        assert!(
            matches!(err, Error::TruncatedFrame { received, expected: e } if received == end as u64 && e == expected),
            "{err}"
        );
    }
}

#[test]
fn an_oversized_split_frame_is_refused_before_allocating() {
    let (head, parts) = sample();
    let wire = wire(&head, &parts);
    let err = decode_all(&wire, 1000).unwrap_err();
    assert!(matches!(err, Error::FrameTooLarge { max: 1000, .. }), "{err}");
}

#[test]
fn split_garbage_never_panics() {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for round in 0..300 {
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let len = 16 + (next() % 64) as usize;
        let lens: Vec<u64> = (0..next() % 4).map(|_| next() % 5 * 4).collect();
        let body: Vec<u8> = (0..len).map(|_| (next() % 7) as u8).collect();
        let mut wire = with_table(next() % 9, &lens, &body);
        if round % 3 == 0 {
            wire.truncate(next() as usize % wire.len());
        }
        let mut decoder = FrameDecoder::new(128);
        let mut total = 0;
        for chunk in wire.chunks(1 + round % 11) {
            if decoder
                .feed(chunk, &mut |f| total += f.len() + f.parts().iter().map(|p| 4 * p.len()).sum::<usize>())
                .is_err()
            {
                break;
            }
        }
        let _ = decoder.finish();
        assert!(total <= wire.len());
    }
}

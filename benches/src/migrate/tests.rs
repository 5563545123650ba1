use super::*;

fn args(widths: Vec<usize>, in_flight: Vec<u32>) -> MigrateArgs {
    MigrateArgs { widths, in_flight, rows: 4, repeats: 1, dir: None, json: None }
}

fn summary(ms: f64, bytes: u64) -> Summary {
    Summary { ms, bytes, parts_ms: BTreeMap::new(), runs_ms: vec![ms], cpu_ms: ms, cpu_runs_ms: vec![ms] }
}

#[test]
fn rows_line_up_under_the_header() {
    let moved = Moved { parameters: 0, optimizer_state: 0, gradients: 0, segments: 0, queued_messages: 0, total: 0 };
    let row = Row {
        width: 2048,
        in_flight: 4,
        moved_bytes: moved,
        segments: summary(412.5, 210 << 20),
        recompute: summary(480.0, 200 << 20),
        restart: summary(1800.0, 200 << 20),
        raw_quic: summary(300.0, 210 << 20),
        raw_tcp: summary(190.0, 210 << 20),
        a_over_d: 1.375,
        c_over_a: 4.36,
        a_target_met: false,
        c_target_met: false,
    };
    let line = format_row(&row);
    assert_eq!(line.len(), format_header().len(), "{line}\n{}", format_header());
    assert!(line.contains("210.0 MiB") && line.ends_with("NO     NO"), "{line}");
}

#[test]
fn bad_lists_are_refused_with_the_flag() {
    assert!(check_args(&args(vec![64], vec![1, 4])).is_ok());
    let text = |a: MigrateArgs| check_args(&a).unwrap_err().to_string();
    assert!(text(args(vec![], vec![1])).contains("--widths"));
    assert!(text(args(vec![0], vec![1])).contains("--widths"));
    assert!(text(args(vec![64], vec![0])).contains("--in-flight"));
    assert!(text(args(vec![1 << 16], vec![1])).contains("--widths 65536"));
}

#[test]
fn the_fixture_repeats_itself_bit_for_bit() {
    let fixture = Fixture::new(16, 3, 2).unwrap();
    let mut one = fixture.prepare().unwrap();
    let mut two = fixture.prepare().unwrap();
    assert_eq!(one.entered, two.entered);
    let (a, b) = (one.leaving.release(&MOVING).unwrap(), two.leaving.release(&MOVING).unwrap());
    assert_eq!(a, b);
    assert_eq!(a.layers.iter().map(|l| l.segments.len()).sum::<usize>(), 2 * MOVING.len());
    assert!(a.layers.iter().all(|l| l.optimizer.len() == 2 && l.grads.is_none()), "Adam state, no gradient sums");
}

#[test]
fn shipping_and_recomputing_leave_the_same_tape() {
    let fixture = Fixture::new(16, 3, 2).unwrap();
    let links = Links::open(tempfile::tempdir().unwrap().path()).unwrap();
    let mut reference = Reference::default();
    let a = methods::segments(&fixture, &links, Some(&mut reference)).unwrap();
    assert_eq!(reference.segments.len(), 2 * MOVING.len());
    assert!(a.bytes > reference.moved.total(), "the frame holds the payload");
    let b = methods::recompute(&fixture, &links, Some(&reference)).unwrap();
    assert!(b.bytes < a.bytes, "inputs are smaller than the tape here");
    let parts = |run: &Run| run.parts_ms.keys().copied().collect::<Vec<_>>();
    assert_eq!(parts(&a), ["encode", "release", "transfer and adopt"]);
    assert_eq!(parts(&b), ["encode", "recompute", "release", "transfer and adopt"]);
}

#[test]
fn raw_transfers_deliver_every_byte() {
    let mut links = Links::open(tempfile::tempdir().unwrap().path()).unwrap();
    let payload = Bytes::from(vec![7u8; 3 << 20]);
    assert_eq!(methods::raw_quic(&links, &payload).unwrap().bytes, 3 << 20);
    for _ in 0..2 {
        assert_eq!(methods::raw_tcp(&mut links, &payload).unwrap().bytes, 3 << 20);
    }
}

from labctl.state.journal import Journal


def test_replay_tracks_creation_and_release(tmp_path):
    j = Journal(tmp_path / "journal")
    j.netns(["l-underlay", "l-node1", "l-default.a"])
    j.proc("responder", 123, 456)
    j.file("/etc/netns/l-default.a")
    j.release_netns(["l-default.a"])
    j.netns(["l-default.b"])
    owned = j.replay()
    assert owned.netns == ["l-underlay", "l-node1", "l-default.b"]
    assert owned.procs == {"responder": {"pid": 123, "start": 456}}
    assert owned.files == ["/etc/netns/l-default.a"]
    j.release_proc("responder")
    j.release_file("/etc/netns/l-default.a")
    owned = j.replay()
    assert owned.procs == {} and owned.files == []


def test_a_name_created_again_after_release_is_owned_again(tmp_path):
    j = Journal(tmp_path / "journal")
    j.netns(["x"])
    j.release_netns(["x"])
    j.netns(["x"])
    assert j.replay().netns == ["x"]


def test_a_journal_of_an_older_labctl_is_read(tmp_path):
    """labctl 0.1 wrote an intent line before spawning and the pid after it."""
    (tmp_path / "journal").write_text('{"op":"proc","key":"responder","token":"t"}\n{"op":"pid","key":"responder","pid":123,"start":456}\n')
    assert Journal(tmp_path / "journal").replay().procs == {"responder": {"pid": 123, "start": 456}}


def test_garbage_lines_are_skipped_and_missing_journal_is_empty(tmp_path):
    j = Journal(tmp_path / "journal")
    assert j.replay().netns == []
    (tmp_path / "journal").write_text('{"op": "netns", "name": "a"}\nnot json\n{"op": "netns", "name": "b"}\n')
    assert j.replay().netns == ["a", "b"]


def test_replay_reads_appended_lines_and_notices_a_journal_made_anew(tmp_path):
    path = tmp_path / "journal"
    j = Journal(path)
    j.netns(["a", "b"])
    owned = j.replay()
    owned.netns.append("mutated by a caller")
    owned2 = j.replay()
    assert owned2.netns == ["a", "b"], "a caller's copy is its own"
    Journal(path).release_netns(["a"])  # another process appends
    with open(path, "a") as f:
        f.write('{"op":"netns","na')  # a line being written
    assert j.replay().netns == ["b"]
    with open(path, "a") as f:
        f.write('me":"c"}\n')
    assert j.replay().netns == ["b", "c"]
    path.unlink()
    assert j.replay().netns == []
    Journal(path).netns(["z"])  # down, then up again: a new journal
    assert j.replay().netns == ["z"]
    path.write_text('{"op":"netns","name":"y"}\n{"op":"netns","name":"b"}\n')  # same length, other content
    assert j.replay().netns == ["y", "b"]

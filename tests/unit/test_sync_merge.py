"""Pure decisions of xivo-sync: the failback merge plan and rsync's itemized output."""

from __future__ import annotations

from xivo_ha import sync

VM = "var/spool/asterisk/voicemail/default/1001"


def state(mtime: int, size: int = 10) -> sync.FileState:
    return sync.FileState(mtime, size)


def test_merge_copies_new_files_and_only_replaces_older_master_files():
    data = sync.MergeInput(
        staged={"var/lib/xivo/sounds/recordings/new.wav": state(100),
                "var/lib/xivo/sounds/recordings/older-on-master.wav": state(200),
                "var/lib/xivo/sounds/recordings/newer-on-master.wav": state(200),
                "var/lib/xivo/sounds/recordings/same-age.wav": state(200, 11)},
        master={"var/lib/xivo/sounds/recordings/older-on-master.wav": state(100),
                "var/lib/xivo/sounds/recordings/newer-on-master.wav": state(300),
                "var/lib/xivo/sounds/recordings/same-age.wav": state(200, 12)},
        digests={},
    )
    kinds = {a.source.rsplit("/", 1)[1]: a.kind for a in sync.plan_merge(data)}
    assert kinds == {"new.wav": "copy", "older-on-master.wav": "update", "newer-on-master.wav": "keep",
                     "same-age.wav": "keep"}


def test_merge_renumbers_a_colliding_voicemail_message_as_a_whole():
    data = sync.MergeInput(
        staged={f"{VM}/INBOX/msg0000.txt": state(500), f"{VM}/INBOX/msg0000.wav": state(500),
                f"{VM}/INBOX/msg0001.txt": state(510), f"{VM}/INBOX/msg0001.wav": state(510),
                f"{VM}/Old/msg0000.txt": state(400), f"{VM}/unavail.wav": state(450)},
        master={f"{VM}/INBOX/msg0000.txt": state(100), f"{VM}/INBOX/msg0000.wav": state(100)},
        digests={f"{VM}/INBOX/msg0000.txt": "slave-a", f"{VM}/INBOX/msg0001.txt": "slave-b",
                 f"{VM}/Old/msg0000.txt": "master-x"},
        master_numbers={f"{VM}/INBOX": frozenset({0, 2}), f"{VM}/Old": frozenset({0})},
        master_messages={VM: frozenset({"master-x", "master-y"})},
    )
    actions = {a.source: a for a in sync.plan_merge(data)}
    # slave msg0000 collides with the master's msg0000: moved whole to the first free number.
    assert actions[f"{VM}/INBOX/msg0000.txt"].target == f"{VM}/INBOX/msg0001.txt"
    assert actions[f"{VM}/INBOX/msg0000.wav"].target == f"{VM}/INBOX/msg0001.wav"
    # slave msg0001 is then taken too (by the renumbered one): next free after 0, 1, 2 is 3.
    assert actions[f"{VM}/INBOX/msg0001.txt"].target == f"{VM}/INBOX/msg0003.txt"
    assert actions[f"{VM}/INBOX/msg0001.wav"].target == f"{VM}/INBOX/msg0003.wav"
    assert "msg0001 is another message on the master" in actions[f"{VM}/INBOX/msg0001.txt"].describe()
    # Already on the master (same .txt, any folder): not copied again.
    assert actions[f"{VM}/Old/msg0000.txt"].kind == "keep"
    # A greeting is an ordinary file.
    assert actions[f"{VM}/unavail.wav"].kind == "copy"
    assert all(a.kind != "update" or a.source == a.target for a in actions.values())


def test_merge_keeps_a_free_number():
    data = sync.MergeInput(
        staged={f"{VM}/INBOX/msg0004.txt": state(1), f"{VM}/INBOX/msg0004.wav": state(1)},
        master={}, digests={f"{VM}/INBOX/msg0004.txt": "d"},
        master_numbers={f"{VM}/INBOX": frozenset({0, 1})},
    )
    assert [(a.kind, a.target) for a in sync.plan_merge(data)] == [
        ("copy", f"{VM}/INBOX/msg0004.txt"), ("copy", f"{VM}/INBOX/msg0004.wav")]


def test_itemized_rsync_output():
    output = "\n".join([
        "cd+++++++++ etc/",
        ".d..t...... etc/asterisk/",
        "<f+++++++++ etc/asterisk/extensions_extra.d/a.conf",
        "<f.st...... etc/asterisk/extensions_extra.d/b.conf",
        "cL+++++++++ etc/asterisk/link -> target",
        "*deleting   etc/asterisk/extensions_extra.d/old.conf",
        ">f+++++++++ var/spool/x",
    ])
    changes = sync.ItemizedChanges.parse(output)
    assert changes.changed == ("etc/asterisk/extensions_extra.d/a.conf", "etc/asterisk/extensions_extra.d/b.conf",
                               "etc/asterisk/link -> target", "var/spool/x")
    assert changes.deleted == ("etc/asterisk/extensions_extra.d/old.conf",)

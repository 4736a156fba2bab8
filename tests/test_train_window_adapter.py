"""`benchmarks/train_window_adapter.py --hard-partners`: the oracle hard negatives are what its docstring says."""

from benchmark_scripts import load_benchmark


def test_hard_partners_follow_their_anchor_and_hold_their_moment():
    from peft_vtg.data import LongVideoWindowCollator
    from peft_vtg.synth import SynthVTG
    from peft_vtg.synth.backbone import load_backbone
    from peft_vtg.synth.dataset import FrameSource

    script = load_benchmark("train_window_adapter")
    rows, videos = SynthVTG(seed=0, num_videos={"train": 60, "val": 1, "test": 1}).split("train")
    collator_class = script.hard_partner_collator(LongVideoWindowCollator, rows, videos, seed=0)
    collator = collator_class(load_backbone()[1], FrameSource(videos), rows, 4, window_fraction=1.0,
                              absent_fraction=1.0)
    batch_rows = [dict(rows[i]) for i in range(8)]
    batch = collator(batch_rows)
    assert batch["qid"][0::2] == [row["qid"] for row in batch_rows[:4]]  # anchors, each followed by its partner
    assert batch["moment_present"][1::2].all()  # partners hold their moment even when every window would not
    assert not batch["moment_present"][0::2].any()

    def triple(qid):
        row = next(r for r in rows if r["qid"] == qid)
        video = videos[row["vid"]]
        return video, next(video.triple(e) for e in video.events if abs(video.window(e)[0] - row["windows"][0][0])
                           < 1e-6 and abs(video.window(e)[1] - row["windows"][0][1]) < 1e-6)

    look_alikes = 0
    for anchor, partner in zip(batch["qid"][0::2], batch["qid"][1::2]):
        (_, mine), (video, theirs) = triple(anchor), triple(partner)
        if sum(a != b for a, b in zip(mine, theirs)) == 1:  # a look-alike (else none existed: a random row)
            look_alikes += 1
            assert mine not in {video.triple(e) for e in video.events}  # the partner's video lacks the anchor's event
    assert look_alikes >= 2

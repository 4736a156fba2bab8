"""Zero-shot similarity baseline."""

import pytest
import torch

from peft_vtg.baselines import change_embeddings, frame_query_similarity, zero_shot_moments
from tiny_models import FRAMES, inputs, tiny_clip, tiny_siglip


def test_span_with_above_average_similarity_wins():
    similarity = torch.tensor([[0.1, 0.1, 0.9, 0.8, 0.9, 0.1, 0.1, 0.1]])
    (moments,) = zero_shot_moments(similarity, [16.0], top_k=3)
    assert moments[0][:2] == (pytest.approx(4.0), pytest.approx(10.0))  # frames 2..4 of 2 s each
    # hand-computed: mean 0.3875; excess of frames 2..4 = 0.5125 + 0.4125 + 0.5125
    assert moments[0][2] == pytest.approx(1.4375)
    assert len(moments) == 3 and moments[0][2] >= moments[1][2] >= moments[2][2]


def test_padding_is_ignored():
    similarity = torch.tensor([[0.0, 1.0, 0.0, 5.0]])
    (moments,) = zero_shot_moments(similarity, [3.0], frame_mask=torch.tensor([[1, 1, 1, 0]]), top_k=1)
    assert moments[0][:2] == (pytest.approx(1.0), pytest.approx(2.0))


@pytest.mark.parametrize("build", [tiny_clip, tiny_siglip])
def test_frame_query_similarity_is_cosine(build):
    x = inputs("clip", batch=2)
    similarity = frame_query_similarity(build(), x["pixel_values"], x["input_ids"], x["attention_mask"])
    assert similarity.shape == (2, FRAMES) and similarity.abs().max() <= 1.0 + 1e-5


def test_change_embeddings_hand_computed():
    embeddings = torch.tensor([[0.0, 1.0, 3.0, 6.0, 10.0]]).unsqueeze(-1)  # (1, 5, 1)
    # window 1: e[t+1] - e[t-1], ends repeated: e[-1] = e[0], e[5] = e[4]
    assert change_embeddings(embeddings, 1).flatten().tolist() == [1.0, 3.0, 5.0, 7.0, 4.0]
    # window 2 at t=2: mean(6, 10) - mean(0, 1)
    assert change_embeddings(embeddings, 2)[0, 2, 0].item() == pytest.approx(7.5)


def test_motion_similarity_compares_changes_with_the_query():
    x = inputs("clip", batch=2)
    model = tiny_clip()
    similarity = frame_query_similarity(model, x["pixel_values"], x["input_ids"], x["attention_mask"], motion_window=1)
    assert similarity.shape == (2, FRAMES) and similarity.abs().max() <= 2.0 + 1e-5  # |change| <= 2 x mean norm
    still = x["pixel_values"][:, :1].expand_as(x["pixel_values"])  # a video that never changes has no motion
    flat = frame_query_similarity(model, still, x["input_ids"], x["attention_mask"], motion_window=1)
    assert flat.abs().max() < 1e-4

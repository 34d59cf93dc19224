"""The NGF structure term: sign-blind, height-blind above eps, and it notices moved or lost edges."""

import pytest

torch = pytest.importorskip("torch")

from models.ct.structure_loss import ngf_loss  # noqa: E402


@pytest.fixture
def organ() -> "torch.Tensor":
    g = torch.Generator().manual_seed(0)
    x = torch.full((2, 1, 64, 64), -0.4)
    x[..., 20:40, 18:44] = 0.3  # a 70 HU organ in fat, on the soft-tissue curve
    return x + 0.02 * torch.randn(x.shape, generator=g)


def test_inverted_or_rescaled_contrast_scores_like_the_input(organ):
    same = ngf_loss(organ, organ).item()
    assert ngf_loss(organ, -organ).item() == pytest.approx(same, abs=1e-6)  # fat bright on T2
    assert ngf_loss(organ, 3.0 * organ - 0.5).item() < same  # a higher step is a fuller edge


def test_lost_moved_or_blurred_edges_score_worse(organ):
    same = ngf_loss(organ, organ).item()
    assert ngf_loss(organ, torch.zeros_like(organ)).item() == pytest.approx(1.0)
    assert ngf_loss(organ, torch.roll(organ, 3, dims=3)).item() > same + 0.1
    blurred = torch.nn.functional.avg_pool2d(organ, 7, 1, 3, count_include_pad=False)
    assert ngf_loss(organ, blurred).item() > same


def test_edges_the_ct_lacks_cost_nothing(organ):
    extra = organ.clone()
    extra[..., 45:55, 45:55] += 0.5  # liver vs spleen: one HU, two T2 signals
    assert ngf_loss(organ, extra).item() == pytest.approx(ngf_loss(organ, organ).item(), abs=0.02)


def test_gradients_reach_the_output(organ):
    out = torch.zeros_like(organ, requires_grad=True)
    ngf_loss(organ, out + 0.01 * organ).backward()
    assert out.grad is not None and float(out.grad.abs().sum()) > 0


def test_total_variation_is_zero_on_flat_tissue_and_grows_with_texture(organ):
    from models.ct.structure_loss import total_variation

    assert total_variation(torch.full((1, 1, 16, 16), 0.4)).item() == 0.0
    blotchy = organ + 0.2 * torch.nn.functional.interpolate(torch.randn(2, 1, 16, 16), size=64)
    assert total_variation(blotchy).item() > total_variation(organ).item()

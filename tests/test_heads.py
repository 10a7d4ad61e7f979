"""scripts.lib.heads: the checkpoint format round trip and predict_logits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.lib.featio.errors import FeatgapError
from scripts.lib.heads import build_net, load_head, make_checkpoint, predict_logits, save_head


def _checkpoint(hidden=(), l2=False, seed=0):
    torch.manual_seed(seed)
    arch = {"in_dim": 6, "num_classes": 4, "hidden": list(hidden), "dropout": 0.1}
    net = build_net(arch)
    rng = np.random.default_rng(seed)
    return make_checkpoint(name="h", kind="mlp" if hidden else "linear", arch=arch, state_dict=net.state_dict(),
                           mean=rng.normal(size=6), std=rng.uniform(0.5, 2, 6), l2_normalize=l2,
                           hparams={"lr": 0.1})


@pytest.mark.parametrize("hidden,l2", [((), False), ((5, 3), True)])
def test_checkpoint_round_trip(tmp_path, hidden, l2):
    ckpt = _checkpoint(hidden, l2)
    save_head(tmp_path / "model.pt", ckpt)
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert loaded["kind"] == ckpt["kind"] and loaded["hparams"] == {"lr": 0.1}
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(loaded["state_dict"][key], value)
    x = np.random.default_rng(1).normal(size=(11, 6)).astype(np.float32)
    # Reference: the preprocessing written out by hand, then the plain network.
    ref = x / np.linalg.norm(x, axis=1, keepdims=True) if l2 else x
    ref = (ref - ckpt["mean"].numpy()) / ckpt["std"].numpy()
    net = build_net(ckpt["arch"]).eval()
    net.load_state_dict(ckpt["state_dict"])
    expected = net(torch.from_numpy(ref.astype(np.float32))).detach().numpy()
    for source in (tmp_path / "model.pt", loaded, load_head(tmp_path / "model.pt")):
        got = predict_logits(source, x, batch_size=4)
        assert got.dtype == np.float32 and got.shape == (11, 4)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_bad_inputs(tmp_path):
    with pytest.raises(FeatgapError, match="not found"):
        load_head(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(FeatgapError, match="not a loadable"):
        load_head(tmp_path / "junk.pt")
    with pytest.raises(FeatgapError, match="expects features"):
        predict_logits(_checkpoint(), np.zeros((3, 5), np.float32))

"""Reference loss terms against a PyTorch transcription of docs/METHOD.md §3.6–§3.7, §4.6–§4.10 written here.

The torch side (MS-TCN stages, shared BN64, one frame and one sequence discriminator, per-stage CE +
TMSE, adversarial CE on stages 2–3, attentive entropy, L_st and L = Σ e^{a_i} L_i) is written from
the spec, given our weights and the same detached frame features; every term must agree to 1e-4.
Dropout is 0 on both sides (its masks cannot be matched); BatchNorm runs in train mode.
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from svreid_jax.variants import reference


torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch  # run by the second CI stage, which installs the torch extra
nn = torch.nn
F = torch.nn.functional

B, T, D, K = 6, 4, 24, 5


class DilatedResidual(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.conv_dilated = nn.Conv1d(f, f, 3, padding=d, dilation=d)
        self.conv_1x1 = nn.Conv1d(f, f, 1)

    def forward(self, x):  # x [B, F, T]
        return x + self.conv_1x1(F.relu(self.conv_dilated(x)))


class Stage(nn.Module):
    def __init__(self, layers, f, din, k):
        super().__init__()
        self.conv_1x1 = nn.Conv1d(din, f, 1)
        self.layers = nn.ModuleList([DilatedResidual(2 ** i, f) for i in range(layers)])
        self.conv_out = nn.Conv1d(f, k, 1)

    def forward(self, x):
        h = self.conv_1x1(x)
        for layer in self.layers:
            h = layer(h)
        return h, self.conv_out(h)


class Disc(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(f, f), nn.Linear(f, 2)

    def forward(self, x):  # the GRL is the identity going forward
        return self.fc2(F.relu(self.fc1(x)))


class TorchReference(nn.Module):
    def __init__(self, stages, layers, f, din, k):
        super().__init__()
        self.stages = nn.ModuleList([Stage(layers, f, din if s == 0 else k, k) for s in range(stages)])
        self.bn = nn.BatchNorm1d(f)
        self.frame, self.seq = Disc(f), Disc(f)

    def forward(self, x):  # x [B, D, T]
        out = []
        for stage in self.stages:
            h, logits = stage(x)
            out.append((h, logits, self.bn(h.mean(2))))
            x = F.softmax(logits, dim=1)
        return out


def _entropy(logits):
    return -(F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum(1)


def _torch_terms(net, xs, xt, labels, adv, a, l_reid, l_cons):
    src, tgt = net(xs), net(xt)
    terms, l_st = {}, 0.0
    for s, ((hs, ls, qs), (ht, lt, qt)) in enumerate(zip(src, tgt)):
        frames = ls.permute(0, 2, 1).reshape(-1, K)
        ce = F.cross_entropy(frames, labels.repeat_interleave(T))
        lp = F.log_softmax(ls, 1)
        sm = torch.clamp((lp[:, :, 1:] - lp.detach()[:, :, :-1]) ** 2, 0, 16).mean()
        terms[f"stage{s + 1}_ce"], terms[f"stage{s + 1}_tmse"] = ce, sm
        l_st = l_st + ce + 0.15 * sm
        if s in adv:
            fs = net.frame(hs.permute(0, 2, 1).reshape(-1, hs.shape[1]))
            ft = net.frame(ht.permute(0, 2, 1).reshape(-1, ht.shape[1]))
            dom = torch.cat([fs, ft])
            dlab = torch.cat([torch.zeros(len(fs)), torch.ones(len(ft))]).long()
            adv_f = F.cross_entropy(dom, dlab)
            sq = torch.cat([net.seq(qs), net.seq(qt)])
            adv_q = F.cross_entropy(sq, torch.cat([torch.zeros(B), torch.ones(B)]).long())
            cls = torch.cat([frames, lt.permute(0, 2, 1).reshape(-1, K)])
            ent = ((1 + _entropy(dom)) * _entropy(cls)).mean()
            terms[f"stage{s + 1}_adv_frame"], terms[f"stage{s + 1}_adv_seq"] = adv_f, adv_q
            terms[f"stage{s + 1}_entropy"] = ent
            l_st = l_st + adv_f + adv_q + 0.01 * ent
    terms["stage"] = l_st
    w = torch.exp(torch.tensor(a, dtype=torch.float64))
    terms["total"] = w[0] * l_reid + w[1] * l_st + w[2] * l_cons
    return terms


def _load(net, variables):
    """Our TemporalDomainHeads variables → the torch modules (Dense [in,out] → weight [out,in(,1)])."""
    p = flax.traverse_util.flatten_dict(jax.device_get(variables["params"]))
    sd = {}
    for path, v in p.items():
        v = np.asarray(v)
        if path[0] == "temporal":
            mod = path[1]
            if mod == "bn":
                sd[f"bn.{'weight' if path[-1] == 'scale' else 'bias'}"] = v
                continue
            idx = 0 if mod == "stage1" else int(mod.split("_")[1]) + 1
            name = ".".join(path[2:-1]).replace("layers_", "layers.")
            key = f"stages.{idx}.{name}"
            if path[-1] == "bias":
                sd[f"{key}.bias"] = v
            elif v.ndim == 3:  # [k, in, out] → [out, in, k]
                sd[f"{key}.weight"] = v.transpose(2, 1, 0)
            else:
                sd[f"{key}.weight"] = v.T[:, :, None]
        else:
            mod = {"frame_discriminator": "frame", "clip_discriminator": "seq"}[path[0]]
            sd[f"{mod}.{path[1]}.{'weight' if path[-1] == 'kernel' else 'bias'}"] = v.T if v.ndim == 2 else v
    missing, unexpected = net.load_state_dict({k: torch.tensor(np.array(v)) for k, v in sd.items()},
                                              strict=False)
    assert not unexpected and all(m.endswith(("running_mean", "running_var", "num_batches_tracked")) for m in missing)


def test_reference_loss_terms_match_a_torch_transcription_of_the_spec():
    c = demo.get_config("reference")
    c.reference.features, c.reference.num_layers, c.reference.dropout = 16, 3, 0.0
    model = reference.build_temporal_model(c, K)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(B, T, D)).astype(np.float32)
    xt = (rng.normal(size=(B, T, D)) + 0.5).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 4, 4], np.int32)
    variables = model.init(jax.random.key(3), jnp.asarray(xs), frame_beta=0.3, sequence_beta=0.3, train=False)
    kw = dict(frame_beta=0.3, sequence_beta=0.3, train=True, mutable=["batch_stats"])
    out_s, vars_s = model.apply(variables, jnp.asarray(xs), **kw)
    out_t, _ = model.apply({"params": variables["params"], **vars_s}, jnp.asarray(xt), **kw)
    l_st, terms = reference.stage_losses(out_s, out_t, jnp.asarray(labels), c)
    a, l_reid, l_cons = (0.0, -1.55, -0.45), 2.3, 7.1
    total = float(np.exp(np.array(a)) @ np.array([l_reid, float(l_st), l_cons]))

    net = TorchReference(4, 3, 16, D, K).double().train()
    _load(net, variables)
    with torch.no_grad():
        want = _torch_terms(net, torch.from_numpy(xs.transpose(0, 2, 1)).double(),
                            torch.from_numpy(xt.transpose(0, 2, 1)).double(), torch.from_numpy(labels).long(),
                            {1, 2}, a, l_reid, l_cons)
    assert set(terms) | {"stage", "total"} == set(want)
    for name, value in terms.items():
        assert float(value) == pytest.approx(float(want[name]), abs=1e-4), name
    assert float(l_st) == pytest.approx(float(want["stage"]), abs=1e-4)
    assert total == pytest.approx(float(want["total"]), abs=1e-4)
    assert 0.5 < float(want["stage2_adv_frame"]) < 1.0  # a real value, not a degenerate 0

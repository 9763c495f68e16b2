"""ImageNet weights by name (`model.init_from='imagenet'`): the real download path against a local server
with the Hugging Face hub's URL layout, then the cache read back offline, through builders; the file's
tensors checked by name and shape; the pins; `convert` with safetensors; torch parity where torch is
installed. Nothing here reaches the network."""
import hashlib
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from svreid_jax.interop import convert, hub
from svreid_jax.interop import torchvision as tv
from svreid_jax.models import resnet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = "test-org/resnet-tiny.tv_in1k"
REVISION = "0123456789abcdef0123456789abcdef01234567"
WIDTH = 8  # configs/demo.py:micro's tiny ResNet


def _tiny_state(seed=0, num_classes=5):
    """A torchvision-named tiny ResNet state_dict (OIHW convs, positive running variances), as numpy."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in tv.expected_resnet_tensors("tiny", WIDTH, num_classes=num_classes).items():
        value = rng.normal(size=shape).astype(np.float32)
        state[key] = np.abs(value) + 0.5 if key.endswith("running_var") else value
    state["bn1.num_batches_tracked"] = np.array(7, np.int64)
    return state


def _entry(data: bytes, repo=REPO) -> hub.HubWeights:
    return hub.HubWeights(repo, REVISION, "model.safetensors", len(data), hashlib.sha256(data).hexdigest(),
                          "a generated tiny ResNet")


class _Hub:
    """A local HTTP server answering like the hub's /<repo>/resolve/<revision>/<file> for the files it holds."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        hub_state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool):
                hub_state.requests.append((self.command, self.path))
                data = hub_state.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                revision = self.path.split("/resolve/")[1].split("/")[0]
                self.send_response(200)
                self.send_header("X-Repo-Commit", revision)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):  # noqa: N802
                self._answer(body=False)

            def do_GET(self):  # noqa: N802
                self._answer(body=True)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def put(self, entry: hub.HubWeights, data: bytes) -> None:
        self.files[f"/{entry.repo_id}/resolve/{entry.revision}/{entry.filename}"] = data

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def local_hub():
    server = _Hub()
    yield server
    server.close()


def _serve(local_hub, monkeypatch, state, repo=REPO):
    data = safetensors.numpy.save(state)
    entry = _entry(data, repo)
    local_hub.put(entry, data)
    monkeypatch.setitem(hub.IMAGENET_RESNETS, "tiny", entry)
    return entry


# The offline half runs in a fresh interpreter, so huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE /
# HF_ENDPOINT from the environment as it does for users; the table entry is the one the parent served.
_OFFLINE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np, flax, jax
    jax.config.update("jax_threefry_partitionable", False)  # as tests/conftest.py: faster init compile
    sys.path.insert(0, os.getcwd())
    from configs import demo
    from svreid_jax import builders
    from svreid_jax.interop import hub
    hub.IMAGENET_RESNETS["tiny"] = hub.HubWeights(**json.loads(sys.argv[1]))
    try:  # an uncached file, offline: one line saying so
        hub.download(hub.HubWeights(**{**json.loads(sys.argv[1]), "repo_id": "test-org/not-cached"}))
    except OSError as e:
        print("ERROR:" + str(e))
    config = demo.get_config("paper,micro")
    config.model.init_from = "imagenet"
    model = builders.create_model(config, 3)
    params, stats = builders.init_variables(config, model, jax.random.PRNGKey(0))
    flat = {"params/" + "/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params["backbone"]).items()}
    flat.update({"batch_stats/" + "/".join(k): np.asarray(v)
                 for k, v in flax.traverse_util.flatten_dict(stats["backbone"]).items()})
    np.savez(sys.argv[2], **flat)
""")


def test_download_into_empty_cache_then_load_offline_through_builders(tmp_path, local_hub, monkeypatch):
    state = _tiny_state()
    entry = _serve(local_hub, monkeypatch, state)
    cache = tmp_path / "hub-cache"
    assert not cache.exists()

    path = hub.fetch_imagenet_resnet("tiny", cache_dir=str(cache), endpoint=local_hub.url)
    assert path == str(cache / "models--test-org--resnet-tiny.tv_in1k" / "snapshots" / REVISION / "model.safetensors")
    gets = [p for method, p in local_hub.requests if method == "GET"]
    assert gets == [f"/{REPO}/resolve/{REVISION}/model.safetensors"]
    # Fetching again is a cache hit: no request at all.
    before = len(local_hub.requests)
    assert hub.fetch_imagenet_resnet("tiny", cache_dir=str(cache), endpoint=local_hub.url) == path
    assert len(local_hub.requests) == before

    local_hub.close()  # from here on, nothing answers
    out = tmp_path / "backbone.npz"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_ENDPOINT=local_hub.url,
               JAX_PLATFORMS="cpu")
    fields = {k: getattr(entry, k) for k in ("repo_id", "revision", "filename", "size", "sha256", "origin")}
    done = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT, json.dumps(fields), str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    error = [line for line in done.stdout.splitlines() if line.startswith("ERROR:")]
    assert error == [f"ERROR:model.init_from='imagenet': model.safetensors of {local_hub.url}/test-org/not-cached "
                     f"at 0123456 is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set; run once "
                     "with network access, or download model.safetensors of test-org/not-cached (revision "
                     f"{REVISION}) yourself and set model.init_from to its path"]

    # The loaded backbone is the converted file, leaf by leaf, and nothing of it stayed at its random init.
    loaded = dict(np.load(out))
    converted = tv.convert_torchvision_resnet(state)
    expected = {f"{coll}/" + "/".join(k): v for coll in ("params", "batch_stats")
                for k, v in flax.traverse_util.flatten_dict(converted[coll]).items()}
    assert sorted(loaded) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    # One leaf written out by hand: torch OIHW → Linen HWIO.
    np.testing.assert_array_equal(loaded["params/layer3_0/conv2/kernel"],
                                  state["layer3.0.conv2.weight"].transpose(2, 3, 1, 0))


def test_wrong_shape_and_missing_tensor_name_the_tensor(tmp_path, local_hub, monkeypatch):
    state = _tiny_state()
    state["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"][:, :, :1]  # [16, 8, 1, 3]
    _serve(local_hub, monkeypatch, state)
    path = hub.fetch_imagenet_resnet("tiny", cache_dir=str(tmp_path / "a"), endpoint=local_hub.url)
    with pytest.raises(ValueError) as err:
        tv.check_resnet_state_dict(tv.read_state_dict(path), "tiny", WIDTH, where=path)
    assert str(err.value) == (f"{path}: tensor 'layer2.0.conv1.weight' has shape (16, 8, 1, 3), expected "
                              "(16, 8, 3, 3) for a torchvision ResNet-tiny")

    state = _tiny_state()
    del state["layer4.0.downsample.1.running_var"]
    _serve(local_hub, monkeypatch, state, repo="test-org/resnet-tiny-missing")
    path = hub.fetch_imagenet_resnet("tiny", cache_dir=str(tmp_path / "b"), endpoint=local_hub.url)
    with pytest.raises(ValueError) as err:
        tv.check_resnet_state_dict(tv.read_state_dict(path), "tiny", WIDTH, where=path)
    assert str(err.value) == (f"{path}: tensor 'layer4.0.downsample.1.running_var' of a torchvision "
                              "ResNet-tiny is missing")


def test_check_names_unknown_tensors_and_accepts_torchvision_extras():
    state = _tiny_state()
    tv.check_resnet_state_dict(state, "tiny", WIDTH, where="f")  # fc of any size and counters are fine
    tv.check_resnet_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, "tiny", WIDTH, where="f")
    with pytest.raises(ValueError, match=r"^f: tensor 'fc.weight' has shape \(5, 64\), expected \(1000, 64\)"):
        tv.check_resnet_state_dict(state, "tiny", WIDTH, where="f", num_classes=1000)
    with pytest.raises(ValueError) as err:
        tv.check_resnet_state_dict({**state, "bn.weight": np.zeros(3)}, "tiny", WIDTH, where="f")
    assert str(err.value) == ("f: tensor 'bn.weight' (shape (3,)) is not part of a torchvision ResNet-tiny; "
                              "check model.depth")
    with pytest.raises(ValueError, match=r"^f: tensor 'conv1.weight' has shape \(8, 3, 7, 7\), expected "
                                         r"\(64, 3, 7, 7\) for a torchvision ResNet-50$"):
        tv.check_resnet_state_dict(state, 50, None, where="f")


def test_expected_tensors_are_our_resnet_tree():
    """The torchvision shapes the check demands convert into exactly our ResNet's variables."""
    for depth in ("tiny", 18, 50):
        shapes = tv.expected_resnet_tensors(depth, num_classes=1000)
        zeros = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
        converted = tv.convert_torchvision_resnet(zeros, include_fc=True)
        ours = jax.eval_shape(lambda: resnet.resnet(depth, include_fc=True, num_fc_classes=1000).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 64, 32, 3)), train=False))
        for coll in ("params", "batch_stats"):
            got = {k: v.shape for k, v in flax.traverse_util.flatten_dict(converted[coll]).items()}
            want = {k: v.shape for k, v in flax.traverse_util.flatten_dict(ours[coll]).items()}
            assert got == want, (depth, coll)
    # Parameter counts of torchvision's models (conv, BN weight/bias and fc; running stats excluded).
    for depth, count in ((18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160)):
        shapes = tv.expected_resnet_tensors(depth, num_classes=1000)
        assert sum(int(np.prod(s)) for k, s in shapes.items() if "running" not in k) == count, depth


def test_pins_are_commits_and_hashes():
    assert set(hub.IMAGENET_RESNETS) == {"18", "34", "50"}
    for depth, entry in hub.IMAGENET_RESNETS.items():
        assert entry.repo_id == f"timm/resnet{depth}.tv_in1k" and entry.filename == "model.safetensors"
        # ≈ 4 bytes per torchvision parameter and running statistic, plus the safetensors header.
        tensors = tv.expected_resnet_tensors(depth, num_classes=1000)
        payload = 4 * sum(int(np.prod(s)) for s in tensors.values())
        assert payload < entry.size < payload + 64 * 1024, depth
    with pytest.raises(ValueError, match="revision 'main' is not a 40-character commit hash"):
        hub.HubWeights("a/b", "main", "model.safetensors", 1, "0" * 64, "")
    with pytest.raises(ValueError) as err:
        hub.imagenet_weights(101)
    assert str(err.value) == ("model.init_from='imagenet': no pinned ImageNet weights for model.depth=101 "
                              "(svreid_jax.interop.hub.IMAGENET_RESNETS has depths 18, 34, 50); set "
                              "model.init_from to a local torchvision ResNet file (.safetensors, .npz or .pth)")


def test_size_and_hash_mismatch_and_missing_file(tmp_path, local_hub, monkeypatch):
    entry = _serve(local_hub, monkeypatch, _tiny_state())
    data = local_hub.files[f"/{REPO}/resolve/{REVISION}/model.safetensors"]
    wrong = hub.HubWeights(REPO, REVISION, "model.safetensors", entry.size, "ab" * 32, "")
    with pytest.raises(ValueError) as err:
        hub.download(wrong, cache_dir=str(tmp_path), endpoint=local_hub.url)
    assert str(err.value).endswith(f"has SHA-256 {hashlib.sha256(data).hexdigest()}, expected {'ab' * 32}; "
                                   "delete it and fetch again")
    short = hub.HubWeights(REPO, REVISION, "model.safetensors", entry.size + 1, entry.sha256, "")
    with pytest.raises(ValueError, match=f"has {entry.size:,} bytes, expected {entry.size + 1:,}"):
        hub.download(short, cache_dir=str(tmp_path), endpoint=local_hub.url)
    absent = hub.HubWeights("test-org/absent", REVISION, "model.safetensors", 1, "0" * 64, "")
    with pytest.raises(OSError) as err:
        hub.download(absent, cache_dir=str(tmp_path), endpoint=local_hub.url)
    assert str(err.value).startswith(f"model.init_from='imagenet': {local_hub.url}/test-org/absent at 0123456 "
                                     "answered HTTP 404 for model.safetensors; check HF_ENDPOINT, or download")


def test_convert_reads_and_writes_safetensors(tmp_path):
    state = _tiny_state()
    safetensors.numpy.save_file(state, str(tmp_path / "in.safetensors"))
    assert convert.convert(str(tmp_path / "in.safetensors"), str(tmp_path / "out.npz")) == len(state)
    assert convert.convert(str(tmp_path / "out.npz"), str(tmp_path / "back.safetensors")) == len(state)
    back = tv.read_state_dict(str(tmp_path / "back.safetensors"))
    assert sorted(back) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k])
        assert back[k].dtype == state[k].dtype
    # The command line, as the README runs it.
    done = subprocess.run([sys.executable, "-m", "svreid_jax.interop.convert", f"--in={tmp_path / 'in.safetensors'}",
                           f"--out={tmp_path / 'cli.npz'}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"wrote {len(state)} arrays to {tmp_path / 'cli.npz'}"
    assert sorted(np.load(tmp_path / "cli.npz").files) == sorted(state)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"bad.safetensors: cannot read it as a safetensors file"):
        tv.read_state_dict(str(tmp_path / "bad.safetensors"))


def _torch_tiny_forward(torch, sd, x):
    """torchvision's ResNet forward in eval mode written with torch.nn.functional over the state_dict
    (BasicBlocks; stem max-pool padding 1; last stage stride 2 as torchvision, so last_stride=2 on our side)."""
    F = torch.nn.functional

    def bn(h, name):
        return F.batch_norm(h, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], training=False, eps=1e-5)

    h = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, 3, stride=2, padding=1)
    for s in range(1, 5):
        p = f"layer{s}.0"
        stride = 1 if s == 1 else 2
        y = F.relu(bn(F.conv2d(h, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
        y = bn(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
        if f"{p}.downsample.0.weight" in sd:
            h = bn(F.conv2d(h, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
        h = F.relu(y + h)
    return h


@pytest.mark.torch
def test_torch_written_safetensors_match_torch_forward(tmp_path, local_hub, monkeypatch):
    """A state_dict saved by safetensors' torch API, fetched through the hub path and loaded with numpy only,
    gives our backbone the torch forward (eval mode) to 1e-4 of the output scale."""
    torch = pytest.importorskip("torch", reason="torch parity needs the torch extra")
    import safetensors.torch

    sd = {k: torch.from_numpy(v) for k, v in _tiny_state(seed=3).items()}
    data = safetensors.torch.save(sd)
    entry = _entry(data)
    local_hub.put(entry, data)
    monkeypatch.setitem(hub.IMAGENET_RESNETS, "tiny", entry)
    path = hub.fetch_imagenet_resnet("tiny", cache_dir=str(tmp_path), endpoint=local_hub.url)

    net = resnet.resnet("tiny", width=WIDTH, last_stride=2)
    x = np.random.default_rng(1).normal(size=(2, 64, 32, 3)).astype(np.float32)
    init = net.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)
    params, stats = tv.load_backbone_weights(path, {"backbone": init["params"]}, {"backbone": init["batch_stats"]})
    ours = net.apply({"params": params["backbone"], "batch_stats": stats["backbone"]}, jnp.asarray(x), train=False)
    with torch.no_grad():
        want = _torch_tiny_forward(torch, sd, torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(ours)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_convert_and_the_main_command_line_import_together():
    """convert keeps its flags to itself: main's --out (the export folder) is defined once beside it."""
    import importlib

    main = importlib.import_module("svreid_jax.main")
    assert "out" in main.FLAGS and convert.main(["convert", "--in=x.pth"]) == 2

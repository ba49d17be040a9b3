"""PyTorch references for ``benchmark``: the same networks, timed the same way.

The torchvision zoo's models (``resnet18``, ``convnext_tiny``, ...: ``pretrained.ARCHS``) are
torchvision's own; ``cnn`` (and ``lenet5``), ``cifar_resnet*`` and
``mlp`` are written here layer for layer from the cnnjax modules' fields, and
:func:`reference_model` checks that the parameter count equals the JAX model's. The timed step
is the usual eager loop (uint8 -> normalise -> forward -> cross-entropy -> backward -> SGD with
momentum 0.9 and weight decay 5e-4 on kernels only, as cnnjax's ``optim.decay_mask``); on GPU
it runs under bf16 autocast with channels_last tensors when the benchmark's dtype is bfloat16.
torch is imported lazily: it is a test extra, not a dependency of cnnjax.
"""

from __future__ import annotations

import time
from typing import Any

from cnnjax import config, models
from cnnjax.models import pretrained
from experiments.benchmarks.measure import LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, timing

# What changes how, not what, the network computes (cnnjax.models.layers.Performance).
PERFORMANCE_ONLY_FIELDS = set(config.PERFORMANCE_FIELDS)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_pads(padding: Any, size: int, kernel: int, stride: int) -> tuple[tuple[int, int], ...]:
    """(low, high) pads of the two spatial dims, as cnnjax's CNN pads (square images)."""
    if isinstance(padding, str):
        pads = (0, 0) if padding.upper() == "VALID" else _same_pads(size, kernel, stride)
        return pads, pads
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _torch_cnn(f: dict[str, Any], num_classes: int, channels: int, size: int):
    from torch import nn

    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
            "silu": nn.SiLU, "swish": nn.SiLU, "elu": nn.ELU}
    act = acts[f["activation"]]
    k, s, w = f["kernel_size"], f["strides"], f["pool_window"]
    layers, width = [], channels
    for i, features in enumerate(f["features"]):
        (top, bottom), (left, right) = _conv_pads(f["padding"], size, k, s)
        if top == bottom and left == right:
            conv_pad = (top, left)
        else:  # asymmetric ("SAME" with stride > 1, even kernels): pad explicitly
            layers.append(nn.ZeroPad2d((left, right, top, bottom)))
            conv_pad = 0
        layers.append(nn.Conv2d(width, features, k, s, conv_pad, bias=not f["batch_norm"]))
        size = (size + top + bottom - k) // s + 1
        if f["batch_norm"]:  # flax momentum 0.9 (kept) is torch momentum 0.1 (taken)
            layers.append(nn.BatchNorm2d(features, eps=1e-5, momentum=0.1))
        layers.append(act())
        if f["pool"] != "none" and (i + 1) % f["pool_every"] == 0:
            layers.append((nn.MaxPool2d if f["pool"] == "max" else nn.AvgPool2d)(w, w))
            size //= w
        width = features
    layers.append(nn.Flatten())
    width = width * size * size
    for hidden in f["dense"]:
        if f["dropout"]:
            layers.append(nn.Dropout(f["dropout"]))
        layers += [nn.Linear(width, hidden), act()]
        width = hidden
    if f["dropout"]:
        layers.append(nn.Dropout(f["dropout"]))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _torch_mlp(f: dict[str, Any], num_classes: int, channels: int, size: int):
    from torch import nn

    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[f["activation"]]
    layers, width = [nn.Flatten()], channels * size * size
    for hidden in f["hidden"]:
        layers += [nn.Linear(width, hidden), act()]
        if f["dropout"]:
            layers.append(nn.Dropout(f["dropout"]))
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def _torch_cifar_resnet(f: dict[str, Any], num_classes: int, channels: int, size: int):
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.stride, self.extra, self.project = stride, cout - cin, None
            if (stride != 1 or cin != cout) and f["shortcut"] == "B":
                self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                             nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            if self.project is not None:
                x = self.project(x)
            elif self.stride != 1 or self.extra:  # type A: subsample, zero-pad channels
                x = F.pad(x[:, :, :: self.stride, :: self.stride],
                          (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
            return F.relu(out + x)

    n = (f["depth"] - 2) // 6
    layers = [nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    width = 16
    for i, features in enumerate((16, 32, 64)):
        for j in range(n):
            layers.append(Block(width, features, 2 if i > 0 and j == 0 else 1))
            width = features
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def reference_model(name: str, model_kwargs: dict[str, Any], num_classes: int, channels: int,
                    image_size: int, expected_params: int | None = None):
    """The PyTorch twin of cnnjax model ``name``; checks its parameter count if given."""
    fields = {**models.model_fields(name),
              **{k: v for k, v in model_kwargs.items() if k not in PERFORMANCE_ONLY_FIELDS}}
    cls = models.get_constructor(name)
    while hasattr(cls, "func"):
        cls = cls.func
    if name in pretrained.ARCHS and not set(model_kwargs) - PERFORMANCE_ONLY_FIELDS:
        import torchvision  # the torchvision zoo: its own models

        module = getattr(torchvision.models, name)(num_classes=num_classes)
    elif cls.__name__ == "CNN":
        module = _torch_cnn(fields, num_classes, channels, image_size)
    elif cls.__name__ == "MLP":
        module = _torch_mlp(fields, num_classes, channels, image_size)
    elif cls.__name__ == "CifarResNet":
        module = _torch_cifar_resnet(fields, num_classes, channels, image_size)
    else:
        raise NotImplementedError(f"no PyTorch reference for model {name!r}")
    count = sum(p.numel() for p in module.parameters())
    if expected_params is not None and count != expected_params:
        raise AssertionError(
            f"PyTorch {name} has {count:,} parameters, the cnnjax model {expected_params:,}")
    return module


def prepare(name: str, model_kwargs: dict[str, Any], batch_size: int,
            image_shape: tuple[int, int, int], num_classes: int, dtype: str, warmup: int,
            expected_params: int | None = None, compile: bool = True,
            threads: tuple[int, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Builds and warms up the PyTorch reference, eager and ``torch.compile``d.

    Returns ``(info, runners)``: ``info[mode]`` holds the first-step (compile) seconds and peak
    memory, or ``"n/a (reason)"`` when that mode failed; ``runners[mode](n)`` runs ``n``
    synchronised steps and returns their seconds. With ``threads``, every mode is run at each
    of those intra-op thread counts (``torch.set_num_threads``), as modes ``"eager (2 threads)"``.
    """
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        return {"eager": f"n/a ({e})", "compile": f"n/a ({e})"}, {}
    from experiments.benchmarks.measure import peak_rss_bytes, reset_peak_rss

    h, w, c = image_shape
    try:
        model = reference_model(name, model_kwargs, num_classes, c, h, expected_params)
    except NotImplementedError as e:
        return {"eager": f"n/a ({e})", "compile": f"n/a ({e})"}, {}
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    fmt = torch.channels_last if gpu else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY},
                           {"params": rest, "weight_decay": 0.0}],
                          lr=LEARNING_RATE, momentum=MOMENTUM)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, c, h, w), dtype=torch.uint8, generator=gen)
    images = images.to(device).contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    amp = dtype == "bfloat16"
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def make_runner(net, num_threads):
        def one_step():
            opt.zero_grad(set_to_none=True)
            x = (images.float() - 127.5) / 64.0
            with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(net(x), labels)
            loss.backward()
            opt.step()

        def run(n: int) -> list[float]:
            if num_threads:
                torch.set_num_threads(num_threads)
            times = []
            for _ in range(n):
                t = time.perf_counter()
                one_step()
                sync()
                times.append(time.perf_counter() - t)
            return times
        return run

    info: dict[str, Any] = {
        "info": f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads by "
                "default" + (", bf16 autocast" if amp else "") + (", channels_last" if gpu else "")
    }
    runners = {}
    compiled = None
    for num_threads in threads or (0,):
        for mode in ("eager", "compile"):
            key = f"{mode} ({num_threads} threads)" if num_threads else mode
            if mode == "compile" and not compile:
                info[key] = "n/a (skipped: --no_torch_compile)"
                continue
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            rss_reset = reset_peak_rss()
            try:
                if mode == "compile" and compiled is None:
                    compiled = torch.compile(model)
                run = make_runner(model if mode == "eager" else compiled, num_threads)
                first = run(1)[0]
                run(max(warmup - 1, 0))
            except Exception as e:  # noqa: BLE001 -- inductor needs a toolchain; report, go on
                info[key] = f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                continue
            info[key] = {
                "first_step_s": first,
                "peak_memory_bytes": torch.cuda.max_memory_allocated() if gpu else
                peak_rss_bytes(),
                "peak_memory_source": "torch.cuda.max_memory_allocated" if gpu else
                "process peak RSS (VmHWM)" if rss_reset else "process peak RSS since start",
            }
            runners[key] = run
    return info, runners


def ratios(tinfo: dict[str, Any], times: dict[str, list[float]], jax_step: dict[str, float],
           batch_size: int) -> dict[str, Any]:
    """Fills each torch mode's step times in ``tinfo``; cnnjax's speed relative to each."""
    out: dict[str, Any] = {}
    for mode, r in tinfo.items():
        if isinstance(r, dict) and mode in times:
            r["step"] = timing(times[mode])
            r["images_per_s"] = batch_size / r["step"]["median_s"]
            out[f"cnnjax / torch {mode}"] = {
                "median": r["step"]["median_s"] / jax_step["median_s"],
                "best": r["step"]["best_s"] / jax_step["best_s"],
            }
        elif mode != "info":
            out[f"cnnjax / torch {mode}"] = None
    return out

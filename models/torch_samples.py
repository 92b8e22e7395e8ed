"""TorchScript sample models (random weights, fixed seeds; nothing downloaded).

Imported by make_models.py --torch, which needs PyTorch 2.11 (the version
libtorch and tch 0.24 expect; tests/python/torch-requirements.txt).

Repository layout: torch/<name>/1/model.pt beside a committed config.yaml.
  mlp_torch    the `mlp` ONNX sample's exact weights (FP32 256 -> 1024 -> 1024 -> 10);
               forward returns a tuple (logits `output`, softmax `probabilities`).
  resnet18     a ResNet-18-shaped CNN (BasicBlocks 2-2-2-2, 1000 classes), input
               FP32 [N, 3, 224, 224] `input`, output `output` [N, 1000].
  typed_torch  forward(ids INT64, mask BOOL, half FP16, brain BF16) returns a dict:
               ids_doubled, mask_inverted, half_scaled (x 0.5), brain_doubled.
  guarded      y = x * 2 for FP32 [N, 4]; raises for inputs over 1000 (a model
               failing at run time, for error tests; served by config.pbtxt).
"""

from __future__ import annotations

import io
from typing import Dict, Tuple

import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        import numpy as np  # Only here: bench/gpu builds resnet18 where numpy may be absent.

        # The same draws as make_models.make_mlp, so both runtimes compute the same function.
        rng = np.random.default_rng(seed)
        sizes = [256, 1024, 1024, 10]
        self.layers = nn.ModuleList()
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            bias = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
            layer = nn.Linear(fan_in, fan_out)
            layer.weight.data = torch.from_numpy(weight.T.copy())
            layer.bias.data = torch.from_numpy(bias)
            self.layers.append(layer)

    def forward(self, input: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = input
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < 2:
                x = torch.relu(x)
        return x, torch.softmax(x, dim=1)


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = nn.Sequential()
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.downsample(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        blocks = []
        inplanes = 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes, 1)]
            inplanes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(input))
        return self.fc(torch.flatten(torch.mean(x, dim=(2, 3)), 1))


class Typed(nn.Module):
    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, half: torch.Tensor, brain: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        return {
            "ids_doubled": ids * 2,
            "mask_inverted": torch.logical_not(mask),
            "half_scaled": half * 0.5,
            "brain_doubled": brain * 2,
        }


class Guarded(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 1000).any()):
            raise RuntimeError("guarded: inputs must be at most 1000")
        return x * 2


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = {"mlp_torch": Mlp, "resnet18": ResNet18, "typed_torch": Typed, "guarded": Guarded}[name]()
    return model.eval()


SAMPLES = ["mlp_torch", "resnet18", "typed_torch", "guarded"]


def weights_digest(path) -> str:
    """sha256 over a saved module's parameters and buffers, in name order. The
    archive bytes themselves differ between runs (PyTorch writes a random
    serialization id), so reproducibility is checked on what was computed."""
    import hashlib

    digest = hashlib.sha256()
    for key, tensor in sorted(torch.jit.load(str(path)).state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def serialize(name: str) -> bytes:
    scripted = torch.jit.script(build(name))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()

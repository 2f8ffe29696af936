"""What trains: the model, what a batch goes through, which weights learn in an epoch, and the DDP and compiled
wrappers that go with them (timm keeps this in its task object; the Trainer's loop only asks it).

  model  the whole network; what checkpoints hold and what is evaluated and exported
  net    what a batch goes through: `model`, or only its head when the loaders yield cached backbone
         features (features=True, see features.py)
  ddp    `net` in DistributedDataParallel under torchrun (None in one process)
  compiled  --compile: torch.compile(ddp or net)
Both wrappers are rebuilt when unfreezing changes which parameters train: DDP registers the parameters that
require grad when it is built, and a compiled graph is specialised to them.
"""

from __future__ import annotations

import torch
from torch import nn

from petlab.config import ModelConfig
from petlab.engine.distributed import Distributed
from petlab.models import ARCHS, head_parameters


class Trainable:
    """Built from the model section (which layers are the head, freezing) and two training switches."""

    def __init__(self, model: nn.Module, m: ModelConfig, device: torch.device, *, features: bool = False,
                 dist: Distributed | None = None, channels_last: bool = False, compile: bool = False):
        self.m, self.device, self.features, self.compile = m, device, features, compile
        self.dist = dist or Distributed()
        self.model = model.to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net = self.head_of(model)
        self.ddp = self.compiled = None
        self._built_for = {"ddp": None, "compiled": None}  # the frozen/unfrozen state each wrapper was built for
        self._fresh_compile = False
        self._head_ids = head_parameters(model, m.arch)

    def head_of(self, model: nn.Module) -> nn.Module:
        """What a batch of this run goes through, of `model` (or of its EMA copy): the head on cached features."""
        return model.get_submodule(ARCHS[self.m.arch].head) if self.features else model

    def backbone_frozen(self, epoch: int) -> bool:
        m = self.m
        return m.freeze_backbone and (m.unfreeze_at is None or epoch < m.unfreeze_at)

    def set_epoch(self, epoch: int) -> None:
        """Which weights train in this epoch (frozen backbone, BatchNorm statistics), and the wrappers for that."""
        frozen = self.backbone_frozen(epoch)
        for p in self.model.parameters():
            p.requires_grad_(id(p) in self._head_ids or not frozen)
        self.model.train()
        if frozen or self.m.freeze_batchnorm:  # a frozen backbone keeps its BatchNorm statistics too
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if self.dist.enabled and self._built_for["ddp"] != frozen:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda"
                                               else None)
            self._built_for["ddp"], self.compiled = frozen, None
        if self.compile and (self.compiled is None or self._built_for["compiled"] != frozen):
            # a new set of trainable weights compiles again; its first step is timed as compile time
            self.compiled = torch.compile(self.ddp if self.ddp is not None else self.net)
            self._built_for["compiled"], self._fresh_compile = frozen, True

    def forward(self) -> nn.Module:
        """What a training batch goes through: compiled, or in DDP, or the plain net (model or head)."""
        # `is not None`, not `or`: a compiled module answers bool() with len(), which most models lack
        return next(m for m in (self.compiled, self.ddp, self.net) if m is not None)

    def compiles_next_step(self) -> bool:
        """True once after each (re)compile: the next step is the one that compiles."""
        fresh, self._fresh_compile = self._fresh_compile, False
        return fresh

    def no_sync(self, last_of_group: bool):
        """DDP's no_sync for a batch whose gradients stay local (not the last of an accumulation group)."""
        return self.ddp.no_sync if self.ddp is not None and not last_of_group else None

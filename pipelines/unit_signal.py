"""The teacher signal of one work unit, handed from the teacher handler to the unit writer.

One typed value per unit instead of a dict whose keys pick the code path:

    DeviceEncoded(arrays={stored array name: [R, ...]})   encoded on the device (teacher_dump.encode):
                                                          StoreWriter.write_unit_encoded
    HostSignal(values={"topk_ids": ..., "hidden": {l: ...}, ...})   float32 signal, write_unit's keyword
                                                          arguments: the store encodes on the host
    HostSignal(values={})                                 a tokens-only unit (k = 0, no teacher)

``signal.write(writer, unit, tokens_RxT)`` writes and commits the unit;
``signal.rows(start, stop)`` is the signal of rows [start, stop) (the handler
splits one call's rows back into units); ``signal.with_loss_mask(mask_RxT)``
adds a rollout input's loss mask (store/rollout.py: it is stored as is, so
both forms take it unchanged). No Beam, no model math: numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceEncoded:
    """The store's arrays, encoded on the device.

    Attributes:
        arrays: {stored array name: numpy [R, ...]}, every array of the profile but tokens
            (and loss_mask until ``with_loss_mask``).
    """

    arrays: Mapping[str, np.ndarray]

    def rows(self, start: int, stop: int) -> DeviceEncoded:
        return DeviceEncoded(arrays={name: a[start:stop] for name, a in self.arrays.items()})

    def with_loss_mask(self, mask_RxT) -> DeviceEncoded:
        return DeviceEncoded(arrays={**self.arrays, "loss_mask": np.asarray(mask_RxT, np.uint8)})

    def write(self, writer, unit: int, tokens_RxT) -> None:
        writer.write_unit_encoded(unit, {"tokens": np.asarray(tokens_RxT, np.int32), **self.arrays})


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostSignal:
    """The float32 teacher signal (or none: a tokens-only unit), encoded by the store on the host.

    Attributes:
        values: ``StoreWriter.write_unit``'s keyword arguments: topk_ids, topk_logprobs [R,T,K],
            hidden {l: [R,T,D]}, sampled_ids / sampled_counts / sampled_logprobs [R,T,S]; {} for none.
    """

    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def rows(self, start: int, stop: int) -> HostSignal:
        return HostSignal(
            values={
                name: (
                    {n: a[start:stop] for n, a in value.items()}
                    if isinstance(value, Mapping)
                    else value[start:stop]
                )
                for name, value in self.values.items()
            }
        )

    def with_loss_mask(self, mask_RxT) -> HostSignal:
        return HostSignal(values={**self.values, "loss_mask": np.asarray(mask_RxT, np.uint8)})

    def write(self, writer, unit: int, tokens_RxT) -> None:
        writer.write_unit(unit, tokens=tokens_RxT, **self.values)


UnitSignal = DeviceEncoded | HostSignal

"""FedAvg (McMahan et al., 2017): clients send weight deltas; the server adds their example-weighted mean."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedsqueeze.methods import FedAvgParams
from fedsqueeze.server.aggregation import WeightedSum, add_mean_delta
from fedsqueeze.server.clients import ClientInfo
from fedsqueeze.server.strategies.base import ClientPlan, Strategy
from fedsqueeze.tensors import float_state
from fedsqueeze.wire import ExpectedTensor, expect_all


class FedAvg(Strategy[WeightedSum]):
    """Every client gets the whole model and returns ``trained - global`` for every float tensor.

    A profile is a downlink codec plan: clients asking for the same one share one encoded download.
    """

    name = "fedavg"
    relays_through_edges = True
    Params = FedAvgParams

    def configure(self, round_number: int, clients: Sequence[ClientInfo]) -> dict[str, ClientPlan]:
        plans = {}
        for client in clients:
            uplink, downlink = self.codecs_for(client)
            plans[client.client_id] = ClientPlan(profile=downlink, hyperparameters=self.settings.hyperparameters,
                                                 uplink_codec=uplink, downlink_codec=downlink)
        return plans

    def downlink(self, profile: str) -> tuple[dict[str, torch.Tensor], dict[str, ExpectedTensor]]:
        return float_state(self.model), expect_all(self.specs, profile)

    def expected_update(self, plan: ClientPlan) -> dict[str, ExpectedTensor]:
        return expect_all(self.specs, plan.uplink_codec)

    def new_accumulator(self) -> WeightedSum:
        return WeightedSum()

    def aggregate(self, round_number: int, accumulator: WeightedSum,
                  client_metrics: dict[str, float]) -> dict[str, float]:
        mean_delta = add_mean_delta(self.model, accumulator)
        norm = torch.sqrt(sum((d.double() ** 2).sum() for d in mean_delta.values())).item()
        return {"update_norm": norm}

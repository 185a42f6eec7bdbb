"""ServiceAccounts: a deleted `default` ServiceAccount is made again by the controller."""

from __future__ import annotations

from netlab.api.controllers.serviceaccounts import ServiceAccountController
from netlab.api.resources.strategy import Strategy


class ServiceAccountStrategy(Strategy):
    def __init__(self, controller: ServiceAccountController) -> None:
        self.controller = controller

    def after_delete(self, namespace: str, name: str) -> None:
        self.controller.account_removed(namespace, name)

from django.apps import AppConfig


class CommonConfig(AppConfig):
    name = "common"

    def ready(self) -> None:
        from django.core.signals import request_finished

        from common import checks  # noqa: F401  (registers the system checks)
        from resilience.request_id import clear_request_id

        request_finished.connect(clear_request_id, dispatch_uid="common.clear_request_id")

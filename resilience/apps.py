from django.apps import AppConfig


class ResilienceConfig(AppConfig):
    name = "resilience"
    verbose_name = "Resilience"

    def ready(self) -> None:
        from django.test.signals import setting_changed

        from resilience import checks  # noqa: F401  (registers the system check)
        from resilience.ratelimit import checks as ratelimit_checks  # noqa: F401  (same)
        from resilience.registry import on_setting_changed

        setting_changed.connect(on_setting_changed, dispatch_uid="resilience.reset")

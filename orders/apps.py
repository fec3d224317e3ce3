from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"

    def ready(self) -> None:
        from resilience.idempotency import register_completer

        from orders.completer import complete_order_create

        register_completer("orders.create", complete_order_create)

from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"

    def ready(self) -> None:
        from orders.completer import complete_order_create
        from resilience.idempotency import register_completer

        register_completer("orders.create", complete_order_create)

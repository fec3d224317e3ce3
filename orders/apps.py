from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"

    def ready(self) -> None:
        from django.core.signals import request_started

        from orders.completer import complete_order_create
        from orders.metrics import on_request_started
        from orders.refund_apis import ORDER_REFUND_SCOPE, complete_refund
        from resilience.idempotency import register_completer

        register_completer("orders.create", complete_order_create)
        register_completer(ORDER_REFUND_SCOPE, complete_refund)
        request_started.connect(on_request_started, dispatch_uid="orders-gauges")

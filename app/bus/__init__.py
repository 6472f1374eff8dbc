from app.bus.base import Bus, BusEvent
from app.bus.factory import create_bus

__all__ = ["Bus", "BusEvent", "create_bus"]

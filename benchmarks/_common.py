"""What every benchmark records about the machine it ran on."""
from __future__ import annotations

import os
import platform


def machine_info(device=None) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        # Other processes compete for the CPU on shared machines; keep their load with the numbers.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info.update(torch=torch.__version__, torch_num_threads=torch.get_num_threads())
        if device is not None and torch.device(device).type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    except ImportError:
        pass
    return info

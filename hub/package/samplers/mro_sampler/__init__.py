from .mro_sampler import MROSampler

__all__ = ["MROSampler"]

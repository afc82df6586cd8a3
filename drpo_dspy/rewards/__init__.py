"""Dynamic rewards: the aspect catalogue, the judge-driven reward, the DynamicReward metric."""

"""Networks: DefocusNet (image -> CoC map) and DepthNet (CoC map + image + lens -> depth); the baselines
D3Net (image -> depth, MC dropout) and MDDNet (image -> depth + CoC map)."""

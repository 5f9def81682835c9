"""Networks: DefocusNet (image -> CoC map) and DepthNet (CoC map + image + lens -> depth)."""

"""The device a run uses: choice and checks, the memory-fit check, peak FLOP/s, the allocator."""

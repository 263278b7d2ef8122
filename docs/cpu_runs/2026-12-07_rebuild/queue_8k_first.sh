#!/usr/bin/env bash
# 2026-12-07: the under-8,000 screen's arms for all seeds first, so that one budget is decided this session; then tiny's.
# Each core first waits for the run it is running (core 0: pid 23341, core 1: pid 23122).
core=$1; wait_pid=$2; shift 2
ARMS="eva6 unpadded_a_augment unpadded_b_recipe" ./run.sh $core $wait_pid "$@"
ARMS="tiny_unpadded tiny_v36pad woolly tiny_b_recipe tiny_a_augment" ./run.sh $core 999999 "$@"

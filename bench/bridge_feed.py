"""A synthetic robot for bench/bridge: joint states and 3 cameras (rgb8) at a fixed rate, over DDS,
from pre-generated frames (so the feed costs what a camera driver's publish costs): 4 frames per
camera from a .npy file of shape (cameras, 4, H, W, 3) when one is given, else uniform noise."""

from __future__ import annotations

import sys
import time

import numpy as np
import rclpy
from sensor_msgs.msg import Image, JointState


def main(rate_hz: float, height: int, width: int, cameras: int, state_dim: int, frames_file: str = "") -> None:
    rclpy.init()
    node = rclpy.create_node("bench_feed")
    js_pub = node.create_publisher(JointState, "joint_states", 10)
    pubs = [node.create_publisher(Image, f"camera/cam{i}", 2) for i in range(cameras)]
    rng = np.random.default_rng(0)
    if frames_file:
        stack = np.load(frames_file)
        assert stack.shape[:1] == (cameras,) and stack.shape[2:] == (height, width, 3), stack.shape
        frames = [[f.tobytes() for f in cam] for cam in stack]
    else:
        noise = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8).tobytes() for _ in range(4)]
        frames = [noise[i:] + noise[:i] for i in range(cameras)]
    period, nxt, k = 1.0 / rate_hz, time.monotonic(), 0
    try:
        while rclpy.ok():
            stamp = node.get_clock().now().to_msg()
            js = JointState(position=[float(k % 100) / 100] * state_dim)
            js.header.stamp = stamp
            js_pub.publish(js)
            for i, p in enumerate(pubs):
                img = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=frames[i][k % 4])
                img.header.stamp = stamp
                p.publish(img)
            k += 1
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), *sys.argv[6:7])

"""Embed two sentences through akidbd and compare them. Usage: python3 example.py [SOCKET]"""
import math
import sys

from akidb_client import Client

with Client(sys.argv[1] if len(sys.argv) > 1 else None) as client:
    print("health:", client.health())
    a, b = client.embed(["the robot picks up the red cup", "a red mug is grasped by the arm"], priority="realtime")
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    norm = math.sqrt(sum(float(x) ** 2 for x in a) * sum(float(y) ** 2 for y in b))
    print(f"cosine similarity: {dot / norm:.3f}")

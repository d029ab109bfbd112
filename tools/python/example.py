"""Embed two sentences through akidbd, print their cosine similarity and the daemon's health.

Usage: python3 example.py [SOCKET]     (default: the daemon's default socket)
"""
import math
import sys

from akidb_client import AkidbError, Client


def cosine(a, b) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    return dot / math.sqrt(sum(float(x) ** 2 for x in a) * sum(float(y) ** 2 for y in b))


def main() -> int:
    try:
        with Client(sys.argv[1] if len(sys.argv) > 1 else None) as client:
            a, b = client.embed(["the robot picks up the red cup", "a red mug is grasped by the arm"],
                                priority="realtime", deadline_ms=1000)
            print(f"cosine similarity: {cosine(a, b):.3f}")
            print("health:", client.health())
    except AkidbError as err:
        print(f"akidbd refused: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"cannot reach akidbd: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

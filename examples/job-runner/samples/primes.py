# A CPU-bound job: counts the primes below a bound (argument 1, default 200000).
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
sieve = bytearray([1]) * n
sieve[0:2] = b"\0\0"
for i in range(2, int(n ** 0.5) + 1):
    if sieve[i]:
        sieve[i * i :: i] = bytearray(len(range(i * i, n, i)))
print(f"{sum(sieve)} primes below {n}")

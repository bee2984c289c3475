#!/usr/bin/env bash
# `make run`: start the demo services, then the sidecar with config/sidecar.yaml (embedded stores),
# after printing curl examples. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
CONFIG=${CONFIG:-config/sidecar.yaml}

"$BIN/python" -m demo &
demo_pid=$!
trap 'kill $demo_pid 2>/dev/null || true' EXIT
"$BIN/saga-sidecar" check --config "$CONFIG"

cat <<'TOUR'

saga-sidecar is starting on http://127.0.0.1:8080 (admin: http://127.0.0.1:9901).
Try, in another terminal:

  # pass-through to the demo app
  curl -s http://127.0.0.1:8080/hello?name=world

  # an idempotent charge: run it twice, the second answer is a replay (Idempotent-Replayed: true)
  curl -si -X POST http://127.0.0.1:8080/charges -H 'Idempotency-Key: order-42' \
       -H 'Content-Type: application/json' -d '{"amount": 42}'
  curl -s http://127.0.0.1:8080/charges          # one charge, not two

  # same key, different body: 422
  curl -si -X POST http://127.0.0.1:8080/charges -H 'Idempotency-Key: order-42' -d '{"amount": 43}'

  # a saga: create order -> charge payment (declined above 1000, which compensates the order)
  curl -si -X POST http://127.0.0.1:8080/api/v1/payments -H 'Idempotency-Key: pay-1' \
       -H 'Content-Type: application/json' -d '{"order_no": "A-1", "amount": 120}'
  curl -si -X POST http://127.0.0.1:8080/api/v1/payments -H 'Idempotency-Key: pay-2' \
       -H 'Content-Type: application/json' -d '{"order_no": "A-2", "amount": 5000}'

  # a duplicate while the first runs: 409 (the demo charge takes "delay" seconds)
  curl -s -X POST http://127.0.0.1:8080/charges -H 'Idempotency-Key: slow-1' \
       -H 'Content-Type: application/json' -d '{"amount": 7, "delay": 5}' &
  sleep 1; curl -si -X POST http://127.0.0.1:8080/charges -H 'Idempotency-Key: slow-1' \
       -H 'Content-Type: application/json' -d '{"amount": 7, "delay": 5}'

  # saga shapes: a checkout's parallel group (coupon EXPIRED: the group is undone), a TCC transfer
  curl -si -X POST http://127.0.0.1:8080/api/v1/checkouts -H 'Content-Type: application/json' \
       -d '{"order_no": "C-1", "sku": "book", "amount": 30, "coupon": "EXPIRED"}'
  curl -si -X POST http://127.0.0.1:8080/api/v1/transfers -H 'Content-Type: application/json' \
       -d '{"from": "acc-1", "to": "acc-2", "amount": 25}'
  curl -s http://127.0.0.1:3002/accounts

  # a failed saga and its operator retry: see the README's tour, step 5
  curl -s -X PUT http://127.0.0.1:3002/refunds/outage
  curl -si -X POST http://127.0.0.1:8080/api/v1/withdrawals -H 'Idempotency-Key: wd-1' \
       -H 'Content-Type: application/json' -d '{"account": "acc-1", "amount": 50, "iban": "INVALID"}'

  # a long-running saga: 202 + Location; the gateway calls back, the settlement is polled
  curl -si -X POST http://127.0.0.1:8080/api/v1/card-payments -H 'Idempotency-Key: card-1' \
       -H 'Content-Type: application/json' -d '{"order_no": "L-1", "amount": 80}'
  curl -s http://127.0.0.1:8080/_saga/sagas/SAGA_ID -H 'Prefer: wait=10'   # from its Location
  # declined (amount over 1000): the gateway calls back "failure", the saga compensates
  curl -si -X POST http://127.0.0.1:8080/api/v1/card-payments -H 'Idempotency-Key: card-2' \
       -H 'Content-Type: application/json' -d '{"order_no": "L-2", "amount": 5000}'

  # operate
  curl -s http://127.0.0.1:9901/healthz
  curl -s http://127.0.0.1:9901/metrics | grep -E '^(http|idempotency|saga)_'
  curl -s http://127.0.0.1:9901/sagas
  open http://127.0.0.1:9901/dashboard

TOUR
"$BIN/saga-sidecar" serve --config "$CONFIG"

"""What the tests share: the servers (`infra`), a worker in-process or as a process (`e2e`), the
storage path without a broker (`storage`), the offsets CLI (`offsets`), the scripted consumer
(`scripted_kafka`), the reference model (`reference_model`), fault-injecting Kafka and
PostgreSQL proxies (`kafka_proxy`, `pg_proxy`), event builders (`event_builders`) and the chaos
campaigns' machinery (`chaos`).

Test modules import them as `from support.infra import Topics`: pytest puts tests/ (it has no
__init__.py) on sys.path.
"""

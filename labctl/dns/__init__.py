"""The cluster DNS: its records from the topology (records), and the answers
the lab's responder gives from them (server)."""

"""A ZODB application on a TLS cluster: the storage opened from ZConfig (ca, cert, key) and
from a neos:// URI commits and reads back; a storage without TLS, or with a certificate
that lacks the client role, is refused with an error that says why.

Certificates are made with the openssl command, as an operator would (docs/deploy.md):
a CA, the cluster's certificate with the master, storage and admin roles (several OUs),
and a client's with neo-client."""

import os
import shutil
import subprocess
import tempfile
import unittest

import transaction
import ZODB
import ZODB.config
from BTrees.OOBTree import OOBTree
from ZODB import POSException

import neo_rs
from neo_rs.zodburi import resolve_uri
from test_conformance import CLUSTER, NEO, SYSTEM_TEMP


def openssl(*args, cwd):
    subprocess.run(("openssl",) + args, cwd=cwd, check=True, capture_output=True)


def make_certificates(directory):
    """ca.pem; cluster.pem/.key (master, storage, admin); client.pem/.key (client);
    storage-only.pem/.key (a storage's, no client role)."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    with open(os.path.join(directory, "extensions.cnf"), "w") as extensions:
        extensions.write("extendedKeyUsage=serverAuth,clientAuth\n"
                         "subjectAltName=IP:127.0.0.1\n")
    for name, units in (("cluster", ("neo-master", "neo-storage", "neo-admin")),
                        ("client", ("neo-client",)),
                        ("storage-only", ("neo-storage",))):
        subject = "/CN=%s" % name + "".join("/OU=%s" % unit for unit in units)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", name + ".key", "-out", name + ".csr", "-subj", subject, cwd=directory)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", name + ".pem", "-days", "2",
                "-extfile", "extensions.cnf", cwd=directory)


class TlsClusterTests(unittest.TestCase):
    def setUp(self):
        if shutil.which("openssl") is None:
            self.fail("the openssl command is needed (scripts/test.sh installs it)")
        self.directory = tempfile.mkdtemp(prefix="neo-rs-tls-", dir=SYSTEM_TEMP)
        make_certificates(self.directory)
        self.files = lambda name: {
            "ca": self.path("ca.pem"), "cert": self.path(name + ".pem"),
            "key": self.path(name + ".key")}
        cluster = self.files("cluster")
        self.process = subprocess.Popen(
            [NEO, "cluster", "--cluster", CLUSTER, "--bind", "127.0.0.1:0", "--storages", "1",
             "--data", self.path("data"), "--ca", cluster["ca"], "--cert", cluster["cert"],
             "--key", cluster["key"]],
            stdout=subprocess.PIPE,
            stderr=None if os.environ.get("NEO_TEST_LOG") else subprocess.DEVNULL,
        )
        line = self.process.stdout.readline().decode()
        marker = "master listening on "
        self.assertIn(marker, line)
        self.master = line.split(marker, 1)[1].split(",", 1)[0].strip()

    def tearDown(self):
        self.process.terminate()
        self.process.wait(30)
        self.process.stdout.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.directory, name)

    def test_zconfig_and_neos_uri_commit_and_read_over_tls(self):
        client = self.files("client")
        db = ZODB.config.databaseFromString(
            "%%import neo_rs\n<zodb>\n<neo>\nmaster_nodes %s\nname %s\n"
            "ca %s\ncert %s\nkey %s\n</neo>\n</zodb>\n"
            % (self.master, CLUSTER, client["ca"], client["cert"], client["key"]))
        try:
            connection = db.open()
            connection.root()["tree"] = tree = OOBTree()
            for i in range(200):
                tree["key%d" % i] = "value %d" % i
            transaction.commit()
            connection.close()
            # The client's own figures, for the application's /metrics.
            metrics = db.storage.metrics()
            self.assertIn('neo_client_commit_seconds_count{node="C', metrics)
            self.assertIn("# TYPE neo_client_commit_seconds summary", metrics)
        finally:
            db.close()
        factory, _ = resolve_uri("neos://%s@%s?ca=%s&cert=%s&key=%s&cache_size=0"
                                 % (CLUSTER, self.master, client["ca"], client["cert"],
                                    client["key"]))
        db = ZODB.DB(factory())
        try:
            connection = db.open()
            tree = connection.root()["tree"]
            self.assertEqual(len(tree), 200)
            self.assertEqual(tree["key123"], "value 123")
            connection.close()
        finally:
            db.close()
        with self.assertRaises(ValueError):
            resolve_uri("neos://%s@%s?ca=%s" % (CLUSTER, self.master, client["ca"]))
        with self.assertRaises(ValueError):
            resolve_uri("neo://%s@%s?ca=%s" % (CLUSTER, self.master, client["ca"]))

    def test_plain_tcp_and_wrong_roles_are_refused_with_the_reason(self):
        with self.assertRaises(POSException.StorageError) as caught:
            neo_rs.Storage(self.master, CLUSTER)
        self.assertIn("speaks only TLS", str(caught.exception))
        # A storage's certificate is not a client's: refused before connecting.
        with self.assertRaises(ValueError) as caught:
            neo_rs.Storage(self.master, CLUSTER, **self.files("storage-only"))
        self.assertIn("neo-client", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            neo_rs.Storage(self.master, CLUSTER, ca=self.path("ca.pem"))
        self.assertIn("--cert, --key missing", str(caught.exception))


if __name__ == "__main__":
    unittest.main()

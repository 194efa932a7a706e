from setuptools import setup

setup(
    name="txsockproxy",
    version="0.1.0",
    description="A transparent TCP/unix-socket proxy for Twisted, a twistd plugin "
    "re-implementing lighttpd's mod_sockproxy",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # find_packages() would skip twisted.plugins: list both explicitly.
    packages=["txsockproxy", "txsockproxy._fast", "txsockproxy.lighttpd", "twisted.plugins"],
    # An explicit root makes "pip install -e" use a plain .pth of the project
    # root, so Twisted finds twisted/plugins/ here; its default import hook
    # would hide our plugins from twistd.
    package_dir={"": "."},
    install_requires=[
        # Tested (CI, both ends): 26.4 to 26.10. Before 26.4 a TLS status
        # site fails every client with pyOpenSSL 26.2 and later (see
        # txsockproxy.alpn). No upper bound: a newer Twisted runs the proxy
        # on the portable path (public API only) until it is tested, and the
        # accelerator's start-up check says so (txsockproxy._fast.probe);
        # a bound would only keep users from Twisted's fixes.
        "Twisted>=26.4",
        "zope.interface>=6",
        "service-identity>=24.1",
        "pyOpenSSL>=24",
        "prometheus_client>=0.20",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "psutil>=5.9",
            "mypy>=1.10",
            "mypy-zope>=1.0.5",
            "ruff>=0.5",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)

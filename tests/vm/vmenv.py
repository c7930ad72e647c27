"""The libvirt test environment of Usher's VM tests (tests/vm): fixture helpers, no fixtures.

Everything here is idempotent and needs root. tests/vm/conftest.py builds its fixtures on it;
test_guest_boot.py shows the whole flow without the provider.

Quick use
---------
    import vmenv
    env = vmenv.setup()                 # raises vmenv.Unavailable(reason): pytest.skip(str(e))
    env.conn                            # libvirt.virConnect to env.uri (qemu:///system)
    env.kernel, env.initrd, env.cmdline # the tiny guest, for direct kernel boot
    env.profile()                       # the [vm.NAME] keys of an Usher profile using all this
    vmenv.cleanup(env.conn)             # every usher-t* domain and volume gone (keeps the base)

What setup() makes sure of (each step is also a function of its own)
-------------------------------------------------------------------------
ensure_libvirtd()   virtlogd and libvirtd answer; started (`virtlogd -d`, `libvirtd -d`, as
                    root, detached from the caller's session and stdio) when their sockets do
                    not answer; waits until `virsh -c URI version` works.
ensure_pool()       storage pool POOL ("usher-test"), type dir, at POOL_DIR
                    (/var/lib/usher-test/pool), defined, built, started, autostarted.
ensure_network()    libvirt network NETWORK ("usher-test"): bridge BRIDGE ("usher-test0"),
                    192.168.233.1/24, DHCP .10-.200, no <forward> (isolated), DNS off,
                    dnsmasq's ping check off (it delays each new guest's lease by ~3 s).
                    libvirt 9.0 (iptables backend) adds no NAT rule for it (nothing in the
                    nat table; checked with iptables-save), only rules that name the bridge,
                    in its own LIBVIRT_* chains: filter INPUT accepts DHCP and DNS (tcp/udp
                    67, 53) arriving on usher-test0, OUTPUT the same towards it, FORWARD
                    rejects anything routed into or out of usher-test0 and accepts traffic
                    within it; mangle POSTROUTING fills in the checksum of DHCP replies
                    (udp 68) sent on it. The host's other traffic and rules are untouched.
                    The host reaches the guests directly over the bridge (192.168.233.1 is
                    the host's address on it).
build_guest()       runs tests/vm/guest/build.sh into the cache dir ($USHER_BUILD_DIR/vm-guest,
                    else /var/cache/usher-test/vm-guest) and publishes the kernel and initrd
                    to BOOT_DIR (see "Permissions" below). Returns a Guest. Its kernel is the
                    uncompressed vmlinux, which qemu boots through the PVH entry point:
                    the same Debian kernel, ~2.3 s faster to boot under TCG than the bzImage
                    (no real-mode setup, no xz decompression in emulation).
ensure_base_image() the empty qcow2 BASE_IMAGE ("usher-test-base.qcow2", 64 MiB) in the pool:
                    the provider overlays each VM's root disk on it; the tiny guest never
                    reads it (it boots from kernel+initrd; its root is the initramfs).

Other helpers
-------------
cleanup(conn, prefix="usher-t")  destroys and undefines every domain named prefix*, deletes
                    every volume named prefix* in POOL except BASE_IMAGE. Returns what it
                    removed. Call it before and after (finally:) a test; with the default
                    prefix only while no other VM test runs (it takes their VMs too).
serial_log(name)    the guest's serial console (its whole boot: kernel, /init, guest-app),
                    from the log file its <serial> element names; qemu_log(name) is libvirt's
                    /var/log/libvirt/qemu/NAME.log (qemu's command line and errors).
                    diagnostics(name) both, trimmed, for a failure message.
wait_for_address(conn, name, timeout)  the guest's IPv4 from the network's DHCP leases.
wait_http(url, timeout)               until GET url answers 200; returns the body.
credential(secret, name, t=None)      usher1.<t>.<nonce>.<hex HMAC-SHA256(secret text, usher1.<t>.<nonce>.<name>)>
seed_iso(name, os_user, port, secret, hostname=None)  a NoCloud seed (bytes), as the provider
                    makes one: label cidata, user-data writing /etc/usher/vm.json (b64).
upload_volume(pool, name, data)       a raw volume holding data (stream upload, API only).
create_volume(pool, name, size, backing=None)  a qcow2 volume, optionally a COW overlay.
guest_domain_xml(...)                 the domain XML that boots the tiny guest (see below).

The tiny guest (tests/vm/guest)
-------------------------------
Boots in a few seconds under TCG with cmdline GUEST_CMDLINE. It needs, as devices: its seed
as a virtio disk (read-only is fine) with an iso9660 label cidata; one virtio NIC; optionally
a virtio disk with <serial>usher-data</serial> (stamped with a marker on first boot); ACPI
(<features><acpi/>) for `virsh shutdown` (the power button powers it off at once). 128 MiB of
memory is enough. The app listens on the vm.json port and answers GET / with JSON
{vm, os_user, hostname, forwarded_user, forwarded_users, authenticated, data_marker,
data_marker_created, boot_id, method, path}, GET /healthz "ok", and the t3 login contract
(POST /api/auth/bootstrap, GET /api/auth/session); see tests/vm/guest/README.md.

Permissions (what works with libvirt 9.0 on Debian 12)
------------------------------------------------------
qemu runs as libvirt-qemu:libvirt-qemu (qemu.conf user/group), with dynamic_ownership: libvirt
chowns each disk image and the kernel and initrd to libvirt-qemu while the domain runs and
gives them back to root when the last domain using them stops (read-only disks such as the
seed, and backing files, stay libvirt-qemu: harmless). It never touches the *directories*: every directory on the way must be traversable by libvirt-qemu.
A build directory under /root (0700) or a checkout under a private home is not, so
build_guest() copies kernel and initrd (0644) to /var/lib/libvirt/boot (0711, Debian's own
place for them, and what AppArmor's libvirt profile allows should AppArmor be active; it is
not on this machine: the host's security model is DAC only). The pool directory is 0711
under /var/lib/usher-test (0755); volumes are created 0600 root and relabeled by libvirt at
start. Nothing here needs a <seclabel> override.
"""

import base64
import dataclasses
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

try:
    import libvirt
except ImportError:  # reported by ensure_libvirtd() as a reason to skip
    libvirt = None
else:
    # libvirt's default handler prints every error to stderr, even those of lookups that are
    # expected to fail here; they are raised as libvirtError all the same.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_DIR = os.path.join(HERE, "guest")

URI = "qemu:///system"
POOL = "usher-test"
POOL_DIR = "/var/lib/usher-test/pool"
NETWORK = "usher-test"
BRIDGE = "usher-test0"
HOST_ADDR = "192.168.233.1"
NETMASK = "255.255.255.0"
DHCP_START = "192.168.233.10"
DHCP_END = "192.168.233.200"
BASE_IMAGE = "usher-test-base.qcow2"
BASE_IMAGE_BYTES = 64 << 20
BOOT_DIR = "/var/lib/libvirt/boot"
BOOT_BZIMAGE = "usher-test-vmlinuz"
BOOT_VMLINUX = "usher-test-vmlinux"
BOOT_INITRD = "usher-test-initrd.img"
TEST_PREFIX = "usher-t"
# console=ttyS0: everything on the serial log. quiet: the kernel's boot messages cost time
# on an emulated UART; warnings and errors still show.
GUEST_CMDLINE = "console=ttyS0 quiet"
GUEST_MEMORY_MIB = 128
QEMU_LOG_DIR = "/var/log/libvirt/qemu"


class Unavailable(Exception):
    """The VM test environment cannot be had on this machine; str() is the reason (skip)."""


def _run(argv, timeout=60, check=True, **kw):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (exit %d): %s" % (" ".join(argv), r.returncode,
                                                       (r.stderr or r.stdout).strip()[-2000:]))
    return r


# --- libvirtd --------------------------------------------------------------------------------

def _socket_answers(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _virsh_version(uri):
    try:
        r = subprocess.run(["virsh", "-c", uri, "version"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return r.returncode == 0, r.stdout.strip()


def _start_daemon(argv):
    # Detached: its own session, no stdio of ours (CTest would otherwise wait for the pipes),
    # so the daemon outlives this test run as it would under an init system.
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, start_new_session=True, timeout=30, check=False)


def _kvm_device_as_udev_leaves_it():
    """/dev/kvm as Debian's udev rules leave it (group kvm, 0660). A machine without udev
    (containers, CI sandboxes) has it root:root 0600: libvirtd (root) then probes KVM as
    usable, qemu (libvirt-qemu) cannot open it, and libvirtd throws its capabilities away
    and probes again on nearly every call ("KVM was enabled when probing, but it is not
    available now"): 4-20 s per call, a define once took 61 s."""
    import grp
    try:
        st = os.stat("/dev/kvm")
        kvm = grp.getgrnam("kvm").gr_gid
    except (FileNotFoundError, KeyError):
        return
    if st.st_gid != kvm or st.st_mode & 0o060 != 0o060:
        os.chown("/dev/kvm", -1, kvm)
        os.chmod("/dev/kvm", 0o660)


def ensure_libvirtd(uri=URI, timeout=60):
    """Makes sure `virsh -c uri version` works, starting virtlogd and libvirtd if their sockets
    do not answer (root only). Raises Unavailable with the reason when that cannot be."""
    if libvirt is None:
        raise Unavailable("python3-libvirt is not installed")
    for tool in ("virsh", "qemu-img", "genisoimage"):
        if not shutil.which(tool):
            raise Unavailable("%s not found (Debian: libvirt-clients, qemu-utils, genisoimage)"
                              % tool)
    if os.geteuid() == 0:
        _kvm_device_as_udev_leaves_it()
    ok, out = _virsh_version(uri)
    if ok:
        return
    if not uri.startswith("qemu:///"):
        raise Unavailable("cannot connect to %s: %s" % (uri, out))
    if os.geteuid() != 0:
        raise Unavailable("libvirtd does not answer on %s and starting it needs root: %s"
                          % (uri, out))
    for daemon in ("virtlogd", "libvirtd"):
        if not (shutil.which(daemon) or os.path.exists("/usr/sbin/" + daemon)):
            raise Unavailable("%s not found (Debian: libvirt-daemon-system)" % daemon)
    # libvirtd runs qemu-img, dnsmasq, iptables... from its PATH: give it the sbin dirs
    path = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
    if not _socket_answers("/run/libvirt/virtlogd-sock"):
        _start_daemon(["env", path, "virtlogd", "-d"])
    if not _socket_answers("/run/libvirt/libvirt-sock"):
        _start_daemon(["env", path, "libvirtd", "-d"])
    deadline = time.monotonic() + timeout
    while True:
        ok, out = _virsh_version(uri)
        if ok:
            break
        if time.monotonic() > deadline:
            raise Unavailable("libvirtd started but %s does not answer after %d s: %s"
                              % (uri, timeout, out))
        time.sleep(0.5)
    if not _socket_answers("/run/libvirt/virtlogd-sock"):
        raise Unavailable("virtlogd does not answer on /run/libvirt/virtlogd-sock "
                          "(qemu domains cannot start without it)")


def connect(uri=URI):
    conn = libvirt.open(uri)
    if conn is None:
        raise Unavailable("libvirt.open(%s) failed" % uri)
    return conn


# --- pool, network, base image -----------------------------------------------------------------

def ensure_pool(conn, name=POOL, path=POOL_DIR):
    """The dir pool `name` at `path`: defined (persistent, autostart), built and active."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    os.chmod(os.path.dirname(path), 0o755)
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        xml = ("<pool type='dir'><name>%s</name><target><path>%s</path>"
               "<permissions><mode>0711</mode><owner>0</owner><group>0</group></permissions>"
               "</target></pool>" % (escape(name), escape(path)))
        try:
            pool = conn.storagePoolDefineXML(xml, 0)
        except libvirt.libvirtError:
            pool = conn.storagePoolLookupByName(name)  # defined meanwhile by someone else
    target = ET.fromstring(pool.XMLDesc(0)).findtext("target/path")
    if target != path:
        raise RuntimeError("storage pool %s exists with target %s, not %s: remove it "
                           "(virsh pool-destroy %s; virsh pool-undefine %s)"
                           % (name, target, path, name, name))
    if not os.path.isdir(path):
        pool.build(0)
    if not pool.isActive():
        try:
            pool.create(0)
        except libvirt.libvirtError:
            if not pool.isActive():
                raise
    if not pool.autostart():
        pool.setAutostart(1)
    pool.refresh(0)
    return pool


DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"


def network_xml(name=NETWORK, bridge=BRIDGE, uuid=None):
    # dnsmasq's no-ping: by default dnsmasq pings an address before offering it, which holds
    # back a new guest's first DHCPOFFER by ~3 s; on a private test network nobody else
    # holds addresses.
    return ("<network xmlns:dnsmasq='%s'><name>%s</name>%s"
            "<bridge name='%s' stp='off' delay='0'/><dns enable='no'/>"
            "<ip address='%s' netmask='%s'><dhcp><range start='%s' end='%s'/></dhcp></ip>"
            "<dnsmasq:options><dnsmasq:option value='no-ping'/></dnsmasq:options>"
            "</network>" % (DNSMASQ_NS, escape(name),
                            "<uuid>%s</uuid>" % escape(uuid) if uuid else "", escape(bridge),
                            HOST_ADDR, NETMASK, DHCP_START, DHCP_END))


def _network_current(root, bridge):
    """Whether a network's XML is what network_xml() makes (in the parts that matter)."""
    br = root.find("bridge")
    ip = root.find("ip")
    rng = root.find("ip/dhcp/range")
    opts = [o.get("value") for o in root.iter("{%s}option" % DNSMASQ_NS)]
    return (root.find("forward") is None and br is not None and br.get("name") == bridge
            and ip is not None and ip.get("address") == HOST_ADDR
            and ip.get("netmask") == NETMASK and rng is not None
            and rng.get("start") == DHCP_START and rng.get("end") == DHCP_END
            and "no-ping" in opts)


def ensure_network(conn, name=NETWORK, bridge=BRIDGE):
    """The isolated network `name` (module docstring): defined, autostart, active. An older
    definition is replaced; if it is running it is restarted with the new one, but only while
    no guest is attached to its bridge (else it stays as it is until its next start)."""
    try:
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError:
        try:
            net = conn.networkDefineXML(network_xml(name, bridge))
        except libvirt.libvirtError:
            net = conn.networkLookupByName(name)
    if not _network_current(ET.fromstring(net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)),
                            bridge):
        net = conn.networkDefineXML(network_xml(name, bridge, net.UUIDString()))
    if net.isActive() and not _network_current(ET.fromstring(net.XMLDesc(0)), bridge):
        try:
            ports = os.listdir("/sys/class/net/%s/brif" % bridge)
        except OSError:
            ports = []
        if not ports:
            net.destroy()
    if not net.isActive():
        try:
            net.create()
        except libvirt.libvirtError as e:
            if not net.isActive():
                raise RuntimeError("cannot start network %s (bridge %s, %s/24): %s; is the "
                                   "subnet in use on this host?" % (name, bridge, HOST_ADDR, e))
    if not net.autostart():
        net.setAutostart(1)
    return net


def create_volume(pool, name, size_bytes, backing=None, fmt="qcow2"):
    """A new volume `name` (qcow2 by default) of size_bytes, a copy-on-write overlay of the
    volume path `backing` (qcow2) when given. Returns the virStorageVol."""
    xml = ("<volume><name>%s</name><capacity unit='bytes'>%d</capacity>"
           "<target><format type='%s'/><permissions><mode>0600</mode></permissions></target>"
           % (escape(name), size_bytes, fmt))
    if backing:
        xml += ("<backingStore><path>%s</path><format type='qcow2'/></backingStore>"
                % escape(backing))
    xml += "</volume>"
    return pool.createXML(xml, 0)


def ensure_base_image(pool, name=BASE_IMAGE, size_bytes=BASE_IMAGE_BYTES):
    """The empty qcow2 base image `name` in `pool`; returns its path."""
    pool.refresh(0)
    try:
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError:
        try:
            vol = create_volume(pool, name, size_bytes)
        except libvirt.libvirtError:
            pool.refresh(0)
            vol = pool.storageVolLookupByName(name)  # made meanwhile by someone else
    return vol.path()


def upload_volume(pool, name, data, fmt="raw"):
    """A new volume `name` holding exactly `data` (bytes), uploaded through the API."""
    vol = create_volume(pool, name, len(data), fmt=fmt)
    stream = pool.connect().newStream(0)
    try:
        vol.upload(stream, 0, len(data), 0)
        off = 0
        while off < len(data):
            off += stream.send(data[off:off + (1 << 20)])
        stream.finish()
    except BaseException:
        try:
            stream.abort()
        except libvirt.libvirtError:
            pass
        vol.delete(0)
        raise
    return vol


# --- the guest -----------------------------------------------------------------------------

@dataclasses.dataclass
class Guest:
    kernel: str    # in BOOT_DIR, 0644: give to <kernel>. The PVH vmlinux when the build made
                   # one (boots ~2.3 s faster under TCG), else the bzImage
    initrd: str    # in BOOT_DIR, 0644: give to <initrd>
    cmdline: str
    bzimage: str   # in BOOT_DIR: Debian's vmlinuz itself (boots the same, only slower)
    build_dir: str  # the build cache (vmlinuz, vmlinux, initrd.img, build.stamp)


def guest_cache_dir():
    build = os.environ.get("USHER_BUILD_DIR")
    return os.path.join(build, "vm-guest") if build else "/var/cache/usher-test/vm-guest"


def _publish(src, dst):
    """Copies src to dst (0644) unless dst already has the same content; atomic rename."""
    with open(src, "rb") as f:
        data = f.read()
    try:
        with open(dst, "rb") as f:
            if f.read() == data:
                os.chmod(dst, 0o644)
                return
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix=".usher-test-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)
        os.rename(tmp, dst)
    except BaseException:
        os.unlink(tmp)
        raise


def build_guest(cache_dir=None, boot_dir=BOOT_DIR):
    """Builds (or finds up to date) the tiny guest and publishes it to boot_dir. The first
    build downloads two Debian packages (~72 MB) and takes ~15 s; then ~1 s to check."""
    cache_dir = cache_dir or guest_cache_dir()
    r = subprocess.run([os.path.join(GUEST_DIR, "build.sh"), cache_dir],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError("tests/vm/guest/build.sh %s failed:\n%s" % (cache_dir, r.stdout[-4000:]))
    os.makedirs(boot_dir, mode=0o711, exist_ok=True)
    bzimage = os.path.join(boot_dir, BOOT_BZIMAGE)
    vmlinux = os.path.join(boot_dir, BOOT_VMLINUX)
    initrd = os.path.join(boot_dir, BOOT_INITRD)
    # under build.sh's lock (shared), so a concurrent build cannot pair a new kernel with an
    # old initrd
    with open(os.path.join(cache_dir, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        _publish(os.path.join(cache_dir, "initrd.img"), initrd)
        _publish(os.path.join(cache_dir, "vmlinuz"), bzimage)
        pvh = os.path.exists(os.path.join(cache_dir, "vmlinux"))
        if pvh:
            _publish(os.path.join(cache_dir, "vmlinux"), vmlinux)
    return Guest(kernel=vmlinux if pvh else bzimage, initrd=initrd, cmdline=GUEST_CMDLINE,
                 bzimage=bzimage, build_dir=cache_dir)


def credential(secret, name, t=None, nonce=None):
    """The credential the provider's `mint` makes: usher1.<t>.<nonce>.<hex HMAC-SHA256(key =
    the secret's hex text, message = "usher1.<t>.<nonce>.<name>")>, nonce 32 hex digits."""
    t = int(time.time()) if t is None else int(t)
    nonce = os.urandom(16).hex() if nonce is None else nonce
    msg = "usher1.%d.%s.%s" % (t, nonce, name)
    return "usher1.%d.%s.%s" % (t, nonce, hmac.new(secret.encode(), msg.encode(),
                                                    hashlib.sha256).hexdigest())


def seed_iso(name, os_user, port, secret, hostname=None):
    """A NoCloud seed ISO (bytes) as the provider makes one: volume label cidata; user-data a
    #cloud-config whose write_files puts {name, os_user, port, secret} in /etc/usher/vm.json
    (encoding b64, mode 0600); meta-data with instance-id and local-hostname."""
    vm = json.dumps({"name": name, "os_user": os_user, "port": port, "secret": secret})
    user_data = ("#cloud-config\n"
                 "write_files:\n"
                 "- path: /etc/usher/vm.json\n"
                 "  owner: root:root\n"
                 "  permissions: '0600'\n"
                 "  encoding: b64\n"
                 "  content: %s\n" % base64.b64encode(vm.encode()).decode())
    meta_data = "instance-id: %s\nlocal-hostname: %s\n" % (name, hostname or name)
    with tempfile.TemporaryDirectory(prefix="usher-seed-") as d:
        for fname, text in (("user-data", user_data), ("meta-data", meta_data)):
            with open(os.path.join(d, fname), "w") as f:
                f.write(text)
        iso = os.path.join(d, "seed.iso")
        _run(["genisoimage", "-quiet", "-output", iso, "-volid", "cidata", "-joliet", "-rock",
              os.path.join(d, "user-data"), os.path.join(d, "meta-data")])
        with open(iso, "rb") as f:
            return f.read()


def guest_domain_xml(name, kernel, initrd, root_vol, seed_vol, data_vol=None, pool=POOL,
                     network=NETWORK, memory_mib=GUEST_MEMORY_MIB, vcpus=1,
                     cmdline=GUEST_CMDLINE, domain_type=None, serial_log_path=None):
    """The domain that boots the tiny guest: direct kernel boot, the root disk (qcow2 volume,
    vda), the data disk (qcow2, vdb, serial usher-data) if any, the seed (raw ISO volume, a
    read-only virtio disk), one virtio NIC on `network`, the serial console logged to
    serial_log_path (default /var/log/libvirt/qemu/NAME-serial.log, through virtlogd), ACPI for
    `virsh shutdown`, no graphics, no USB controller (its early handoff costs ~0.2 s of boot
    under TCG), no balloon. domain_type: "kvm" when /dev/kvm works, else "qemu"."""
    domain_type = domain_type or ("kvm" if kvm_usable() else "qemu")
    serial_log_path = serial_log_path or os.path.join(QEMU_LOG_DIR, name + "-serial.log")

    def disk(vol, dev, fmt, extra=""):
        return ("<disk type='volume' device='disk'><driver name='qemu' type='%s'/>"
                "<source pool=%s volume=%s/><target dev='%s' bus='virtio'/>%s</disk>"
                % (fmt, quoteattr(pool), quoteattr(vol), dev, extra))

    disks = [disk(root_vol, "vda", "qcow2")]
    if data_vol:
        disks.append(disk(data_vol, "vdb", "qcow2", "<serial>usher-data</serial>"))
    disks.append(disk(seed_vol, "vdc" if data_vol else "vdb", "raw", "<readonly/>"))
    return """<domain type='%(type)s'>
  <name>%(name)s</name>
  <memory unit='MiB'>%(mem)d</memory>
  <vcpu>%(vcpus)d</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%(kernel)s</kernel>
    <initrd>%(initrd)s</initrd>
    <cmdline>%(cmdline)s</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    %(disks)s
    <interface type='network'><source network=%(network)s/><model type='virtio'/></interface>
    <serial type='pty'><log file=%(log)s append='off'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <controller type='usb' model='none'/>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>""" % {"type": domain_type, "name": escape(name), "mem": memory_mib, "vcpus": vcpus,
                "kernel": escape(kernel), "initrd": escape(initrd), "cmdline": escape(cmdline),
                "disks": "\n    ".join(disks), "network": quoteattr(network),
                "log": quoteattr(serial_log_path)}


def kvm_usable():
    """True when KVM acceleration works here (/dev/kvm opens and the CPU has vmx/svm)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError:
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


# --- waiting and diagnostics --------------------------------------------------------------------

def wait_for_address(conn, name, timeout=60, network=NETWORK):
    """The domain's IPv4 address from the DHCP leases of its network (domifaddr --source
    lease), waiting up to `timeout` s. TimeoutError (with the serial log) when none comes.
    A domain started again (same MAC) is answered at once with the lease of its previous
    boot, still valid for an hour: the address is right, but the guest is not up yet; wait
    for its app (wait_http) rather than taking the lease as "booted"."""
    dom = conn.lookupByName(name)
    deadline = time.monotonic() + timeout
    while True:
        try:
            ifaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
        except libvirt.libvirtError:
            ifaces = {}
        for iface in (ifaces or {}).values():
            for a in iface.get("addrs") or []:
                if a.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4 and a.get("addr"):
                    return a["addr"]
        if not dom.isActive():
            raise RuntimeError("domain %s stopped while waiting for its address\n%s"
                               % (name, diagnostics(name)))
        if time.monotonic() > deadline:
            raise TimeoutError("domain %s got no DHCP lease on %s within %d s\n%s"
                               % (name, network, timeout, diagnostics(name)))
        time.sleep(0.2)


def wait_http(url, timeout=60, name=None):
    """Polls GET url until it answers 200; returns the body (bytes). On timeout a
    TimeoutError naming the last error (and the domain's diagnostics if `name`)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return r.read()
                last = "HTTP %d" % r.status
        except (urllib.error.URLError, OSError) as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise TimeoutError("%s did not answer 200 within %d s (last: %s)%s"
                               % (url, timeout, last, "\n" + diagnostics(name) if name else ""))
        time.sleep(0.2)


def _tail(path, limit):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e.strerror)


def serial_log_path(name, uri=URI):
    """Where the serial console of domain `name` is logged: the <log file> of its <serial>
    (or its <source path> for a file serial); None when it has neither."""
    try:
        conn = libvirt.open(uri)
        try:
            xml = conn.lookupByName(name).XMLDesc(0)
        finally:
            conn.close()
    except libvirt.libvirtError:
        fallback = os.path.join(QEMU_LOG_DIR, name + "-serial.log")
        return fallback if os.path.exists(fallback) else None
    for serial in ET.fromstring(xml).iter("serial"):
        log = serial.find("log")
        if log is not None and log.get("file"):
            return log.get("file")
        src = serial.find("source")
        if serial.get("type") == "file" and src is not None and src.get("path"):
            return src.get("path")
    return None


def serial_log(name, limit=64 << 10, uri=URI):
    """The last `limit` bytes of the serial console of domain `name` (text)."""
    path = serial_log_path(name, uri)
    if not path:
        return "(domain %s logs no serial console)" % name
    return _tail(path, limit)


def qemu_log(name, limit=16 << 10):
    """The last `limit` bytes of libvirt's log of domain `name` (qemu's command line, errors)."""
    return _tail(os.path.join(QEMU_LOG_DIR, name + ".log"), limit)


def diagnostics(name, uri=URI):
    """Serial console and qemu log of `name`, for an assertion or exception message."""
    return ("--- serial console of %s ---\n%s\n--- %s/%s.log ---\n%s"
            % (name, serial_log(name, 16 << 10, uri).rstrip(), QEMU_LOG_DIR, name,
               qemu_log(name, 4 << 10).rstrip()))


# --- cleanup -------------------------------------------------------------------------------------

def cleanup(conn, prefix=TEST_PREFIX, pool_name=POOL, keep=(BASE_IMAGE,)):
    """Destroys and undefines every domain whose name starts with `prefix`, then deletes every
    volume of `pool_name` whose name starts with `prefix`, except those in `keep`. Returns the
    names removed. Idempotent; errors on one item do not stop the others (raised at the end).
    With the default prefix it takes every test's VMs: only where no other VM test runs at the
    same time (CTest: the suite's RESOURCE_LOCK); a single test passes its own names."""
    removed, errors = [], []
    for dom in conn.listAllDomains(0):
        name = dom.name()
        if not name.startswith(prefix):
            continue
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as e:
            if dom.isActive():
                errors.append("destroy %s: %s" % (name, e))
                continue
        try:
            if dom.isPersistent():
                flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                         | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                         | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                dom.undefineFlags(flags)
            removed.append("domain " + name)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                errors.append("undefine %s: %s" % (name, e))
    try:
        pool = conn.storagePoolLookupByName(pool_name)
    except libvirt.libvirtError:
        pool = None
    if pool is not None and pool.isActive():
        # A refresh fails while another volume of the pool is being uploaded ("has
        # asynchronous jobs running"): wait that out.
        for attempt in range(50):
            try:
                pool.refresh(0)
                break
            except libvirt.libvirtError as e:
                if "asynchronous jobs" not in str(e) or attempt == 49:
                    raise
                time.sleep(0.2)
        for vol in pool.listAllVolumes(0):
            name = vol.name()
            if not name.startswith(prefix) or name in keep:
                continue
            try:
                vol.delete(0)
                removed.append("volume " + name)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    errors.append("delete volume %s: %s" % (name, e))
    if errors:
        raise RuntimeError("cleanup of %s*: %s" % (prefix, "; ".join(errors)))
    return removed


# --- everything ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Env:
    uri: str
    conn: object          # libvirt.virConnect
    pool: object          # libvirt.virStoragePool (POOL)
    network: object       # libvirt.virNetwork (NETWORK)
    guest: Guest
    base_image: str       # volume name in POOL
    base_image_path: str

    @property
    def kernel(self):
        return self.guest.kernel

    @property
    def initrd(self):
        return self.guest.initrd

    @property
    def cmdline(self):
        return self.guest.cmdline

    def profile(self, **overrides):
        """The keys of an Usher [vm.NAME] profile that runs the tiny guest here (strings, as
        in the configuration file); overrides replace or add keys."""
        p = {
            "uri": self.uri, "pool": POOL, "base_image": self.base_image,
            "memory": "%dM" % GUEST_MEMORY_MIB, "vcpus": "1", "disk": "64M",
            "data_disk": "64M", "kernel": self.kernel, "initrd": self.initrd,
            "cmdline": self.cmdline, "network": NETWORK,
        }
        p.update({k: str(v) for k, v in overrides.items()})
        return p


def setup(uri=URI, cache_dir=None):
    """Everything the VM tests need (module docstring), idempotent. Raises Unavailable (skip)
    when libvirt cannot be had here; other failures are errors."""
    if os.geteuid() != 0:
        raise Unavailable("the VM tests need root (libvirt's system instance, bridges)")
    ensure_libvirtd(uri)
    conn = connect(uri)
    pool = ensure_pool(conn)
    net = ensure_network(conn)
    guest = build_guest(cache_dir)
    path = ensure_base_image(pool)
    return Env(uri=uri, conn=conn, pool=pool, network=net, guest=guest,
               base_image=BASE_IMAGE, base_image_path=path)

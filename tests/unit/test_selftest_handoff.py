"""The self-test's handoff level without a VM: Xen binary matching, the QEMU command
line, the plan, the staging dom0's initramfs, and the stages read from a real serial
log (tests/unit/data/selftest-handoff-serial.log.gz, saved from a handoff boot of Debian's
Xen 4.17.7 under QEMU with the Debian test kernel as dom0 and crash kernel)."""

from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import pytest

from xenkdump.errors import InputError, OperationError
from xenkdump.selftest import dom0, dom0load, plan, qemu, xenbin
from xenkdump.selftest.cpio import Initramfs
from xenkdump.selftest.job import Job, Options
from xenkdump.selftest.stages import LEVEL_STAGES, Failed, Level, Reached, Stage, Tracker
from xenkdump.units import MIB

DATA = Path(__file__).parent / "data"
SERIAL = DATA / "selftest-handoff-serial.log.gz"  # gzip: kept byte for byte
SERIAL_ID = "006cf6d1e610"
V417 = xenbin.XenVersion(4, 17, ".7")


def xen_bytes(extra: str = ".7", vendor: bytes = b"") -> bytes:
    """The parts of a Xen ELF the matcher reads: magic, banner, version strings."""
    return b"\x7fELF" + bytes(60) + xenbin.BANNER + b" (%s %s)\0" + vendor + extra.encode() + b"\0"


def serial_log() -> str:
    return gzip.decompress(SERIAL.read_bytes()).decode()


# ---- the Xen binary ----


def test_version_parses_the_status_form() -> None:
    assert xenbin.XenVersion.parse("4.17.7") == V417
    assert xenbin.XenVersion.parse("4.20") == xenbin.XenVersion(4, 20, "")
    assert str(xenbin.XenVersion.parse("4.19.1-pre")) == "4.19.1-pre"
    with pytest.raises(InputError, match=r"expected MAJOR\.MINOR"):
        xenbin.XenVersion.parse("four")


@pytest.mark.parametrize(
    ("name", "rank"),
    [
        ("xen-4.17-amd64.gz", 1),  # Debian: major.minor
        ("xen-4.17.gz", 1),
        ("xen-4.17.7.gz", 2),  # upstream install: the whole version
        ("xen-4.17.3.gz", 0),  # another extraversion
        ("xen-4.20-amd64.gz", 0),
        ("xen-4.1-amd64.gz", 0),
        ("xen-4.17-amd64.efi", 0),
        ("xen.gz", 0),
    ],
)
def test_name_rank(name: str, rank: int) -> None:
    assert xenbin.name_rank(name, V417) == rank


def test_the_linker_may_merge_the_extraversion_into_a_longer_string() -> None:
    # ".7" as the tail of a "4.17.7" string is the same C string to the linker.
    merged = xen_bytes(extra="4.17.7")
    assert xenbin.carries(merged, V417)
    assert not xenbin.carries(xen_bytes(extra=".3"), V417)
    assert not xenbin.carries(b"\x7fELF no banner .7\0", V417)


def test_choose_prefers_the_exact_name_and_checks_the_contents(tmp_path: Path) -> None:
    files = {
        "xen-4.17-amd64.gz": xen_bytes(".7"),
        "xen-4.17.7.gz": xen_bytes(".7"),
        "xen-4.17.3.gz": xen_bytes(".3"),
    }
    paths = []
    for name in files:
        (tmp_path / name).write_bytes(b"")
        paths.append(tmp_path / name)
    chosen = xenbin.choose(V417, paths, read=lambda p: files[p.name])
    assert chosen == (tmp_path / "xen-4.17.7.gz").resolve()
    # A name that promises 4.17 whose binary is another 4.17.x does not match.
    files["xen-4.17-amd64.gz"] = xen_bytes(".3")
    assert xenbin.choose(V417, paths[:1], read=lambda p: files[p.name]) is None


def test_two_different_binaries_matching_equally_are_an_error(tmp_path: Path) -> None:
    a, b = tmp_path / "xen-4.17-amd64.gz", tmp_path / "xen-4.17.gz"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    with pytest.raises(OperationError, match=r"several Xen binaries match Xen 4\.17\.7: .*--xen"):
        xenbin.choose(V417, [a, b], read=lambda p: xen_bytes())
    # The same file under two names (upstream's symlinks) is one binary.
    b.unlink()
    b.symlink_to(a.name)
    assert xenbin.choose(V417, [a, b], read=lambda p: xen_bytes()) == a.resolve()


def test_find_reads_the_gzip_in_the_boot_directory(tmp_path: Path) -> None:
    (tmp_path / "xen-4.17-amd64.gz").write_bytes(gzip.compress(xen_bytes()))
    (tmp_path / "xen-4.20-amd64.gz").write_bytes(gzip.compress(xen_bytes(".2")))
    assert xenbin.find(V417, tmp_path) == (tmp_path / "xen-4.17-amd64.gz").resolve()
    assert xenbin.find(xenbin.XenVersion(4, 19, ".1"), tmp_path) is None
    elf = xenbin.unpack(tmp_path / "xen-4.17-amd64.gz", tmp_path / "xen.elf")
    assert elf.read_bytes() == xen_bytes()


def test_not_a_xen_binary_is_one_line_naming_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "vmlinuz"
    junk.write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(InputError, match=r"vmlinuz: expected a Xen hypervisor binary"):
        xenbin.read_elf(junk)
    bad_gz = tmp_path / "xen.gz"
    bad_gz.write_bytes(b"\x1f\x8b" + bytes(20))
    with pytest.raises(InputError, match=r"xen\.gz: Xen binary: cannot read it"):
        xenbin.read_elf(bad_gz)


def test_not_found_says_what_was_looked_for() -> None:
    assert xenbin.not_found(V417, Path("/boot")) == (
        "no Xen binary for the running Xen 4.17.7: looked for /boot/xen-4.17*.gz "
        "(give --xen PATH or selftest.xen)"
    )
    assert "Xen is not running here" in xenbin.not_found(None, Path("/boot"))


# ---- choosing the level ----


def job(tmp_path: Path, **kw: object) -> Job:
    image = plan.Image("/k", "/i", "console=ttyS0", 256 * MIB)
    return Job(image, Options(boot_dir=tmp_path, **kw))  # type: ignore[arg-type]


def test_default_level_is_handoff_when_the_running_xen_has_a_binary(tmp_path: Path) -> None:
    (tmp_path / "xen-4.17-amd64.gz").write_bytes(gzip.compress(xen_bytes()))
    j = job(tmp_path, running_xen="4.17.7")
    j.choose_level()
    assert (j.level, j.xen, j.note) == (Level.HANDOFF, (tmp_path / "xen-4.17-amd64.gz"), "")


def test_default_level_falls_back_to_boot_and_says_so(tmp_path: Path) -> None:
    j = job(tmp_path, running_xen="4.17.7")
    j.choose_level()
    assert j.level is Level.BOOT and j.xen is None
    assert j.note == (
        f"boot level instead of handoff: no Xen binary for the running Xen 4.17.7: looked for "
        f"{tmp_path}/xen-4.17*.gz (give --xen PATH or selftest.xen)"
    )


def test_explicit_handoff_without_a_binary_is_refused(tmp_path: Path) -> None:
    j = job(tmp_path, running_xen="4.17.7", level=Level.HANDOFF)
    with pytest.raises(OperationError, match=r"^no Xen binary for the running Xen 4\.17\.7"):
        j.choose_level()


def test_xen_option_is_checked_and_wins(tmp_path: Path) -> None:
    given = tmp_path / "my-xen"
    given.write_bytes(xen_bytes(".9"))
    j = job(tmp_path, xen=str(given))
    j.choose_level()
    assert (j.level, j.xen) == (Level.HANDOFF, given)
    given.write_bytes(b"not xen")
    with pytest.raises(InputError, match="my-xen: expected a Xen hypervisor binary"):
        job(tmp_path, xen=str(given)).choose_level()
    with pytest.raises(InputError, match="xen: only for the handoff level"):
        Options(level=Level.BOOT, xen=str(given))


# ---- the QEMU command line ----


def test_xen_machine_command_line(tmp_path: Path) -> None:
    m = qemu.XenMachine(
        xen=Path("/w/xen.elf"),
        xen_cmdline=qemu.xen_cmdline(dom0_mib=384, crashkernel="256M@524288K"),
        dom0_kernel=Path("/boot/vmlinuz-6.1"),
        dom0_cmdline="console=hvc0 earlyprintk=xen",
        dom0_initrd=Path("/w/dom0.cpio.gz"),
        memory_mib=704,
        serial=Path("/w/serial.log"),
        shares=(qemu.Share(Path("/"), "hostroot"), qemu.Share(Path("/w"), "xkwork", False)),
        disks=(qemu.Disk(Path("/w/scratch.img")), qemu.Disk(Path("/w/root"), snapshot=True)),
    )
    assert qemu.xen_argv("qemu-system-x86_64", m) == [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64", "-m", "704", "-smp", "1",
        "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
        "-serial", "file:/w/serial.log",
        "-kernel", "/w/xen.elf",
        "-append", "console=com1 com1=115200,8n1 dom0_mem=384M,max:384M loglvl=all "
        "guest_loglvl=all crashkernel=256M@524288K",
        "-initrd", "/boot/vmlinuz-6.1 console=hvc0 earlyprintk=xen,/w/dom0.cpio.gz",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
        "multidevs=remap",
        "-virtfs", "local,path=/w,mount_tag=xkwork,security_model=none,multidevs=remap",
        "-drive", "file=/w/scratch.img,if=virtio,format=raw",
        "-drive", "file=/w/root,if=virtio,format=raw,snapshot=on",
    ]  # fmt: skip
    kvm = qemu.xen_argv("q", m.__class__(**{**m.__dict__, "accel": "kvm"}))
    assert kvm[1:5] == ["-accel", "kvm", "-cpu", "host"]


def test_a_comma_in_a_path_is_refused_not_misparsed() -> None:
    m = qemu.XenMachine(
        Path("/x"), "", Path("/a,b/vmlinuz"), "", Path("/i"), 512, Path("/s"), "tcg"
    )
    with pytest.raises(InputError, match="dom0 kernel '/a,b/vmlinuz': a comma"):
        qemu.xen_argv("q", m)
    with pytest.raises(InputError, match="accelerator"):
        qemu.direct_argv("q", accel="hax", memory_mib=1, serial=Path("/s"), kernel="k", cmdline="")


# ---- the plan ----


def test_handoff_cmdline_is_the_armed_line_less_the_loaders_words() -> None:
    armed = (
        "console=ttyS0,115200 irqpoll nr_cpus=1 elfcorehdr=501388K acpi_rsdp=0xf5a40 "
        "memmap=1G$0x100000000 xenkdump.selftest=old123 -- single"
    )
    assert plan.handoff_cmdline(armed, "abc123") == (
        "console=ttyS0,115200 irqpoll nr_cpus=1 memmap=1G$0x100000000 "
        "xenkdump.selftest=abc123 -- single"
    )


@pytest.mark.parametrize(
    ("addr", "value", "at_host"),
    [
        (0x10000000, "256M@262144K", True),  # inside the VM's 608 MiB; Xen reads K
        (0xAE6FF000, "256M", False),  # the simulated host's: beyond the VM
        (0, "256M", False),  # not known (the CLI without a hypervisor)
        (0x100000, "256M", False),  # among the multiboot modules
    ],
)
def test_crash_area_at_the_hosts_address_when_the_vm_holds_it(
    addr: int, value: str, at_host: bool
) -> None:
    image = plan.Image("/k", "", "", 256 * MIB, crash_addr=addr)
    area = plan.crash_area(image, plan.vm_memory(Level.HANDOFF, 256 * MIB))
    assert (area.value, area.at_host_address) == (value, at_host)
    text = area.describe(image)
    assert ("as on the host" in text) is at_host
    if addr and not at_host:
        assert f"{addr:#x}" in text


def test_a_bigger_dump_gets_more_time_to_scan_and_copy() -> None:
    tiny = plan.handoff_timeouts(300 * MIB, 256 * MIB)  # never below the boot level's
    assert tiny == {Stage.TOKEN_FOUND: 240.0, Stage.DUMP_WRITTEN: 300.0}
    small = plan.handoff_timeouts(512 * MIB, 256 * MIB)  # 256 MiB to read: twice
    assert small == {Stage.TOKEN_FOUND: 480.0, Stage.DUMP_WRITTEN: 600.0}
    big = plan.handoff_timeouts(2048 * MIB, 1024 * MIB)
    assert big == {Stage.TOKEN_FOUND: 1920.0, Stage.DUMP_WRITTEN: 2400.0}
    t = Tracker(SERIAL_ID, Level.HANDOFF, start=0.0, total_timeout=9000.0, timeouts=big)
    t.reach(Stage.CAPTURE_STARTED, 0.0)
    assert t.tick(1919.0) is None
    failed = t.tick(1920.0)
    assert failed is not None and "not reached within 1920 s" in failed.reason


# ---- the staging dom0's initramfs ----


def modinfo(depends: str) -> bytes:
    return b"\x7fELF...\0license=GPL\0depends=" + depends.encode() + b"\0vermagic=6.1\0"


def test_module_dependencies_come_first_and_builtins_are_skipped() -> None:
    mods = {
        "9p": modinfo("9pnet,netfs,fscache"),
        "9pnet": modinfo(""),
        "fscache": modinfo("netfs"),
        "netfs": modinfo(""),
        "xen_privcmd": modinfo(""),
    }
    index = {n: Path(f"/m/{n.replace('_', '-')}.ko") for n in mods}
    order = dom0.load_order(
        ["xen-privcmd", "9p"],
        index,
        frozenset({"netfs"}),
        read=lambda p: mods[dom0.module_name(p.name)],
    )
    assert [n for n, _ in order] == ["xen_privcmd", "9pnet", "fscache", "9p"]
    with pytest.raises(InputError, match=r"kernel module virtio \(needed by 9p\): neither built"):
        dom0.load_order(["9p"], index, frozenset(), read=lambda p: modinfo("virtio"))


def test_kernel_release_from_the_bzimage_version_string() -> None:
    kernel = bytearray(0x800)
    kernel[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", kernel, 0x20E, 0x400)
    kernel[0x600:0x630] = b"6.1.0-57-amd64 (debian-kernel@lists) SMP\0".ljust(48, b"\0")
    assert dom0.kernel_release(bytes(kernel), "k") == "6.1.0-57-amd64"
    with pytest.raises(InputError, match="k: dom0 kernel: expected a bzImage"):
        dom0.kernel_release(bytes(0x800), "k")


def test_settings_refuse_what_a_shell_would_reinterpret() -> None:
    s = dom0.Dom0Settings("abc123", b"t", Path("/var/tmp/w"), "/usr/bin/python3", "/usr/lib")
    assert "st_work='/var/tmp/w'\n" in dom0.settings_text(s)
    bad = dom0.Dom0Settings("abc123", b"t", Path("/var/tmp/it's"), "/usr/bin/python3", "/x")
    with pytest.raises(InputError, match="st_work"):
        dom0.settings_text(bad)


@pytest.mark.kernel
def test_dom0_initramfs_of_the_debian_kernel(debian_kernel: Path) -> None:
    settings = dom0.Dom0Settings(
        "abc123def456", plan.token_for("abc123def456"), Path("/var/tmp/w"), "/usr/bin/python3",
        "/usr/lib/python3/dist-packages",
    )  # fmt: skip
    fs = dom0.initramfs(debian_kernel, settings)
    files = fs.files
    order = files["etc/xenkdump-selftest.modules"][1].decode().split()
    # Xen's devices and the 9p path to the host's root, each after what it needs.
    for name in ("xen_privcmd.ko", "xenfs.ko", "9pnet_virtio.ko", "9p.ko"):
        assert name in order
    assert order.index("9pnet.ko") < order.index("9pnet_virtio.ko") < order.index("9p.ko")
    for name in order:
        assert files[f"lib/modules/{name}"][1].startswith(b"\x7fELF")  # plain, for insmod
    assert files["init"][1] == dom0.INIT.read_bytes()
    assert files["etc/xenkdump-selftest.token"][1] == plan.token_for("abc123def456") + b"\n"
    assert "st_id='abc123def456'" in files["etc/xenkdump-selftest.conf"][1].decode()
    assert isinstance(fs, Initramfs) and io.BytesIO(fs.cpio()).read(6) == b"070701"


# ---- stages from a real handoff boot ----


def feed_log(tracker: Tracker, text: str) -> list[Reached | Failed]:
    events: list[Reached | Failed] = []
    for n, line in enumerate(text.splitlines(keepends=True)):
        events += tracker.feed(line, float(n))
    return events


def test_a_real_handoff_boot_reaches_every_stage_in_order() -> None:
    t = Tracker(SERIAL_ID, Level.HANDOFF, start=0.0, total_timeout=900.0)
    t.reach(Stage.VM_START, 0.0)
    events = feed_log(t, serial_log())
    reached = [e for e in events if isinstance(e, Reached)]
    assert [e.stage for e in reached] == list(LEVEL_STAGES[Level.HANDOFF][1:-1])
    # Each from its own line, none implied by a later one (the line numbers differ).
    assert len({e.at for e in reached}) == len(reached)
    assert t.awaiting(Stage.DONE)
    assert t.values["crash_area"] == "0x16a49000" and t.values["mem_min_avail_kb"] == "181816"


def test_dom0_panicking_before_the_load_fails_at_image_loaded() -> None:
    log = serial_log()
    cut = log.index("xenkdump-selftest: 006cf6d1e610 image-loaded")
    t = Tracker(SERIAL_ID, Level.HANDOFF, start=0.0, total_timeout=900.0)
    events = feed_log(t, log[:cut] + "[ 9.1] Kernel panic - not syncing: Attempted to kill init\n")
    failed = events[-1]
    assert isinstance(failed, Failed) and failed.stage is Stage.IMAGE_LOADED
    assert failed.reason.startswith("dom0 panicked before image-loaded (")


def test_the_loaders_failure_in_dom0_is_the_reason() -> None:
    t = Tracker(SERIAL_ID, Level.HANDOFF, start=0.0, total_timeout=900.0)
    feed_log(t, f"(XEN) Xen version 4.17.7 (Debian)\nxenkdump-selftest: {SERIAL_ID} dom0-up\n")
    (failed,) = t.feed(
        f"xenkdump-selftest: {SERIAL_ID} failed image-loaded crash area: expected a "
        "reservation, found none\n",
        5.0,
    )
    assert isinstance(failed, Failed) and failed.stage is Stage.IMAGE_LOADED
    assert failed.reason == "crash area: expected a reservation, found none"


def test_xen_panicking_ends_the_run() -> None:
    t = Tracker(SERIAL_ID, Level.HANDOFF, start=0.0, total_timeout=900.0)
    t.reach(Stage.VM_START, 0.0)
    # As Xen 4.17 says it when dom0_mem does not fit (seen while sizing the VM).
    events = feed_log(
        t,
        "(XEN) Xen version 4.17.7 (Debian)\n(XEN) Panic on CPU 0:\n"
        "(XEN) Not enough RAM for domain 0 allocation\n(XEN) ****************\n",
    )
    assert isinstance(events[-1], Failed) and events[-1].stage is Stage.DOM0_UP
    assert events[-1].reason == (
        "Xen panicked before dom0-up: Not enough RAM for domain 0 allocation"
    )


def test_xen_without_its_crash_area_ends_the_run() -> None:
    t = Tracker(SERIAL_ID, Level.HANDOFF, start=0.0, total_timeout=900.0)
    t.reach(Stage.VM_START, 0.0)
    # As Xen 4.17 said it for crashkernel=256M@0x10000000 (a number without a unit is KiB).
    events = feed_log(
        t,
        "(XEN) Xen version 4.17.7 (Debian)\n"
        "(XEN) Kdump: DISABLED (failed to reserve 256MB (262144kB) at 0x4000000000)\n",
    )
    assert isinstance(events[-1], Failed) and events[-1].stage is Stage.DOM0_UP
    assert events[-1].reason.startswith("Xen reserved no crash area ((XEN) Kdump: DISABLED")


def test_silence_after_xen_entered_the_image_names_the_purgatory() -> None:
    t = Tracker(
        SERIAL_ID, Level.HANDOFF, start=0.0, total_timeout=900.0,
        hints=plan.handoff_hints("console=ttyS0,115200"),
    )  # fmt: skip
    log = serial_log()
    feed_log(t, log[: log.index("[    0.000000] Linux version 6.1.0-57-amd64", 2000)])
    assert t.next_stage is Stage.CRASH_KERNEL_UP
    failed = t.tick(10_000.0)
    assert failed is not None and "the purgatory halts on an image" in failed.reason


# ---- the dom0 side's loader ----


def test_dom0_loader_reports_a_refused_image_as_one_marker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "dom0load.json"
    fields = {
        "id": "abc123",
        "kernel": str(tmp_path / "missing-vmlinuz"),
        "initrd": "",
        "cmdline": "console=ttyS0",
        "state_dir": str(tmp_path),
    }
    spec.write_text(json.dumps(fields))
    assert dom0load.main([str(spec)]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("xenkdump-selftest: abc123 failed image-loaded ")
    assert "missing-vmlinuz" in line

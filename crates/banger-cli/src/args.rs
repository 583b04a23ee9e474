//! Command-line grammar.

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

/// Disposable, hardware-isolated Linux sandboxes: docker run, but microVMs.
#[derive(Debug, Parser)]
#[command(name = "banger", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Top,
}

#[derive(Debug, Subcommand)]
pub enum Top {
    /// Create, inspect and remove VMs.
    Vm {
        #[command(subcommand)]
        command: VmCmd,
    },
    /// Manage kernels VMs boot.
    Kernel {
        #[command(subcommand)]
        command: KernelCmd,
    },
    /// Manage root images VMs boot from.
    Image {
        #[command(subcommand)]
        command: ImageCmd,
    },
    /// List, inspect and remove snapshots (`banger vm snapshot` takes them).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCmd,
    },
    /// Long commands in flight (starts, builds, snapshots): list them,
    /// watch one from another terminal, or cancel a build or a start.
    #[command(visible_alias = "op")]
    Operation {
        #[command(subcommand)]
        command: OperationCmd,
    },
    /// Control the bangerd daemon (it starts by itself when needed).
    Daemon {
        #[command(subcommand)]
        command: DaemonCmd,
    },
    /// Check what this host can do: KVM, VMMs, storage, networking tools.
    Doctor {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum DaemonCmd {
    /// Start bangerd in the background if it is not running.
    Start,
    /// Stop bangerd; running VMs keep running and are adopted on restart.
    Stop,
    /// Show whether bangerd runs, its pid, paths and VM count (exit 3 if not running).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print bangerd's log.
    Logs {
        /// How many lines from the end.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// List VMs.
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one VM in detail.
    Show {
        /// Name or id.
        vm: String,
        #[arg(long)]
        json: bool,
    },
    /// Record a new VM (name generated when omitted).
    Create(CreateArgs),
    /// Change a VM's settings.
    Set(SetArgs),
    /// Boot a VM (creates its disks on first start).
    Start {
        vm: String,
        #[arg(long)]
        json: bool,
    },
    /// Shut a VM down gracefully (ACPI power button), killing it after a timeout.
    Stop { vm: String },
    /// Stop a VM at once.
    Kill { vm: String },
    /// Print a VM's serial console.
    Logs {
        vm: String,
        /// How many lines from the end (0 = all).
        #[arg(short = 'n', long, default_value_t = 0)]
        lines: usize,
        /// The guest's bytes as they are: control characters (escape
        /// sequences) are shown escaped otherwise.
        #[arg(long)]
        raw: bool,
    },
    /// Delete VMs (they must not be running).
    #[command(visible_alias = "rm")]
    Delete {
        /// Names or ids.
        #[arg(required = true)]
        vms: Vec<String>,
    },
    /// Run a command in a running VM; its exit code becomes banger's.
    Exec {
        /// Name or id.
        vm: String,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Create and start a VM, then run a command in it (`--rm` deletes it after).
    Run(RunArgs),
    /// Copy files or directories between the host and a VM (NAME:/path on one side).
    Cp {
        /// Source: a host path or NAME:/path.
        src: String,
        /// Destination: a host path or NAME:/path.
        dst: String,
    },
    /// Freeze a running VM's vCPUs (its memory and processes are kept).
    Pause { vm: String },
    /// Let a paused VM run again.
    Resume { vm: String },
    /// Save a running VM's memory, devices and disks as a snapshot, then resume it.
    Snapshot(SnapshotArgs),
    /// Snapshot a running VM and start copies of it, each its own machine.
    Fork(ForkArgs),
    /// Log in with the system ssh (banger's key, the VM's pinned host key).
    Ssh {
        /// Name or id.
        vm: String,
        /// Command to run instead of a login shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Name or id of a running (or paused) VM.
    pub vm: String,
    /// Snapshot name; generated when omitted.
    #[arg(long)]
    pub name: Option<String>,
    /// Stop the VM instead of resuming it; its next start restores the snapshot.
    #[arg(long)]
    pub stop: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ForkArgs {
    /// Name or id of a running VM.
    pub vm: String,
    /// The copy's name; with --count K, NAME-1 … NAME-K. Generated when omitted.
    #[arg(long)]
    pub name: Option<String>,
    /// How many copies.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// List snapshots with their sizes.
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one snapshot: what it restores (kernel, image, VMM, shape, devices).
    Show {
        /// Name or id.
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove snapshots no VM still needs.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperationCmd {
    /// The operations in flight, oldest first.
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Follow one operation's stages to its result.
    Watch {
        /// Its id, as `banger operation list` shows it.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel an asset build, import or add (what it made is removed), or
    /// a VM start (the VM ends stopped). Other operations run to their end.
    Cancel { id: String },
}

/// How to run a command in a guest.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Allocate a terminal (follows the local window size).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Stream stdin to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory (default: the user's home).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as (name or uid; default root).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// VM name (generated when omitted).
    #[arg(long)]
    pub name: Option<String>,
    /// Delete the VM when the command ends, whatever happened.
    #[arg(long)]
    pub rm: bool,
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long)]
    pub kernel: Option<String>,
    #[arg(long, visible_alias = "vcpus")]
    pub cpus: Option<u32>,
    #[arg(long, value_name = "MiB")]
    pub memory: Option<u32>,
    /// Give the VM outbound NAT.
    #[arg(long)]
    pub nat: bool,
    #[arg(long, value_enum)]
    pub vmm: Option<VmmArg>,
    /// Boot, instead of restoring this shape's warm-start template.
    #[arg(long)]
    pub cold: bool,
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(Debug, Subcommand)]
pub enum KernelCmd {
    /// List kernels.
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one kernel.
    Show {
        name: String,
        /// Re-hash its files against the recorded sha256.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove a kernel.
    Rm {
        name: String,
        /// Remove it even though VMs name it (they cannot start until it is back).
        #[arg(long)]
        force: bool,
    },
    /// Import a kernel file (ELF vmlinux or bzImage) and an optional initrd.
    Import {
        name: String,
        #[arg(long, value_name = "FILE")]
        vmlinux: std::path::PathBuf,
        #[arg(long, value_name = "FILE")]
        initrd: Option<std::path::PathBuf>,
        /// Extra kernel command-line arguments.
        #[arg(long, value_name = "ARGS")]
        cmdline: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Build a kernel from a Debian package (vmlinux + initramfs of virtio modules).
    Add {
        name: String,
        /// The kernel package (default: the configured one, linux-image-cloud-amd64).
        #[arg(long, value_name = "PACKAGE", num_args = 0..=1, default_missing_value = "", required = true)]
        from_debian: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// List images.
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one image.
    Show {
        name: String,
        /// Re-hash its files against the recorded sha256.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove an image.
    Rm {
        name: String,
        /// Remove it even though VMs name it (they cannot start until it is back).
        #[arg(long)]
        force: bool,
    },
    /// Build a Debian image with debootstrap.
    Build {
        name: String,
        /// Debian suite (default: the configured one, bookworm).
        #[arg(long, value_name = "SUITE")]
        debian: Option<String>,
        /// Extra packages, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "PKG,...")]
        packages: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make the warm-start template of an image in one shape (boots a VM
    /// of it once and saves it when its agent answers); later VMs of that
    /// shape restore it instead of booting. `vm run`/`vm create` make it
    /// on their own the first time; this makes it ahead.
    Warm {
        name: String,
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long, visible_alias = "vcpus")]
        cpus: Option<u32>,
        #[arg(long, value_name = "MiB")]
        memory: Option<u32>,
        #[arg(long, value_name = "SIZE")]
        root_disk: Option<String>,
        #[arg(long, value_name = "SIZE")]
        work_disk: Option<String>,
        #[arg(long, value_enum)]
        vmm: Option<VmmArg>,
        #[arg(long)]
        json: bool,
    },
    /// Import an ext4 root filesystem image or a directory tree.
    ///
    /// Its init is read from its /sbin/init (never following a link out of
    /// the image): systemd when that leads to systemd, otherwise banger's
    /// own init stays PID 1. `image show` says which.
    Import {
        name: String,
        #[arg(
            long,
            value_name = "FILE.ext4",
            conflicts_with = "dir",
            required_unless_present = "dir"
        )]
        rootfs: Option<std::path::PathBuf>,
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmmArg {
    Firecracker,
    Qemu,
}

impl From<VmmArg> for banger_api::vm::VmmKind {
    fn from(v: VmmArg) -> Self {
        match v {
            VmmArg::Firecracker => Self::Firecracker,
            VmmArg::Qemu => Self::Qemu,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VM name (a DNS label: a-z, 0-9, '-'); generated when omitted.
    #[arg(long)]
    pub name: Option<String>,
    /// Virtual CPUs.
    #[arg(long, visible_alias = "vcpus")]
    pub cpus: Option<u32>,
    /// Memory in MiB.
    #[arg(long, value_name = "MiB")]
    pub memory: Option<u32>,
    /// Root disk size, e.g. 8G.
    #[arg(long, value_name = "SIZE")]
    pub root_disk: Option<String>,
    /// Work disk (/root) size, e.g. 8G.
    #[arg(long, value_name = "SIZE")]
    pub work_disk: Option<String>,
    /// Root image name.
    #[arg(long)]
    pub image: Option<String>,
    /// Kernel name.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Give the VM outbound NAT.
    #[arg(long)]
    pub nat: bool,
    /// VMM to use; default picked from the host's capabilities.
    #[arg(long, value_enum)]
    pub vmm: Option<VmmArg>,
    /// Start from this snapshot instead of booting (its machine: cpus,
    /// memory, disks, image, kernel, VMM).
    #[arg(long, value_name = "SNAPSHOT")]
    pub snapshot: Option<String>,
    /// Boot, instead of restoring this shape's warm-start template.
    #[arg(long, conflicts_with = "snapshot")]
    pub cold: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// Name or id.
    pub vm: String,
    #[arg(long, visible_alias = "vcpus")]
    pub cpus: Option<u32>,
    #[arg(long, value_name = "MiB")]
    pub memory: Option<u32>,
    /// New work disk size (grow only), e.g. 16G.
    #[arg(long, value_name = "SIZE")]
    pub work_disk: Option<String>,
    #[arg(long, value_enum)]
    pub nat: Option<OnOff>,
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_typical_invocations() {
        let cli = Cli::try_parse_from([
            "banger", "vm", "create", "--name", "a", "--cpus", "2", "--vmm", "qemu",
        ])
        .expect("parse");
        match cli.command {
            Top::Vm {
                command: VmCmd::Create(a),
            } => {
                assert_eq!(a.name.as_deref(), Some("a"));
                assert_eq!(a.vmm, Some(VmmArg::Qemu));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["banger", "vm", "rm"]).is_err(),
            "delete needs a name"
        );
        assert!(Cli::try_parse_from(["banger", "vm", "set", "x", "--nat", "maybe"]).is_err());
        match Cli::try_parse_from([
            "banger", "vm", "exec", "-it", "-e", "A=1", "box", "--", "sh", "-c", "echo $A",
        ])
        .expect("exec")
        .command
        {
            Top::Vm {
                command: VmCmd::Exec { vm, exec },
            } => {
                assert_eq!(vm, "box");
                assert!(exec.tty && exec.interactive);
                assert_eq!(exec.env, ["A=1"]);
                assert_eq!(exec.command, ["sh", "-c", "echo $A"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["banger", "vm", "exec", "box"]).is_err(),
            "exec needs a command"
        );
        match Cli::try_parse_from(["banger", "vm", "run", "--rm", "--", "true"])
            .expect("run")
            .command
        {
            Top::Vm {
                command: VmCmd::Run(r),
            } => assert!(r.rm && r.exec.command == ["true"]),
            other => panic!("{other:?}"),
        }
    }
}

package Test::Nginx::Util;

# Server management for the Test::Nginx::Socket-compatible harness: settings
# (exported functions and TEST_NGINX_* environment), the server root
# (t/servroot), nginx.conf generation, starting and stopping nginx, and
# reading this block's part of the error log.  Request sending and response
# checks live in Test::Nginx::Socket.  Semantics follow openresty's
# test-nginx (written from its documentation and behaviour, not its code);
# t/README.md lists the supported subset.

use strict;
use warnings;

use base 'Exporter';

use POSIX qw(SIGQUIT SIGKILL SIGTERM WNOHANG);
use File::Spec ();
use File::Path qw(make_path remove_tree);
use List::Util qw(shuffle);
use Scalar::Util qw(looks_like_number);
use Time::HiRes qw(sleep time);
use IO::Socket::INET ();
use IO::Select ();
use Carp qw(croak);

our $VERSION = '0.29';

our @EXPORT = qw(
    env_to_nginx is_str no_long_string $NoLongString bail_out
    add_cleanup_handler add_block_preprocessor error_log_data
    access_log_data setup_server_root write_config_file
    get_nginx_version get_canon_version trim show_all_chars parse_headers
    parse_time run_tests run_test get_pid_from_pidfile expand_env_in_text
    $ServerAddr $ServerName $ServerPort $ServerPortForClient $NginxVersion
    $PidFile $ServRoot $ConfFile $ErrLogFile $RunTestHelper $CheckErrorLog
    $NginxPid nginx_gone_diag
    $RepeatEach $NoNginxManager
    timeout worker_connections workers master_on master_off
    master_process_enabled config_preamble repeat_each log_level no_shuffle
    no_root_location html_dir server_root server_port server_port_for_client
    server_addr server_name no_nginx_manager check_accum_error_log
    sleep_time verbose use_http2 is_running
);

# ---- settings ------------------------------------------------------------

our $Verbose          = $ENV{TEST_NGINX_VERBOSE};
our $NginxBinary      = $ENV{TEST_NGINX_BINARY} || 'nginx';
our $LoadModules      = $ENV{TEST_NGINX_LOAD_MODULES};
our $UseValgrind      = $ENV{TEST_NGINX_USE_VALGRIND};
our $UseHttp2         = $ENV{TEST_NGINX_USE_HTTP2};
our $NoShuffle        = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $Timeout          = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $LogLevel         = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $MasterProcessEnabled = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $DaemonEnabled    = 'on';
our $Workers          = 1;
our $WorkerConnections = 64;
our $TestNginxSleep   = $ENV{TEST_NGINX_SLEEP} || 0.015;
our $NoNginxManager   = $ENV{TEST_NGINX_NO_NGINX_MANAGER} || 0;
our $CheckAccumErrLog = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG};
our $Randomize        = $ENV{TEST_NGINX_RANDOMIZE};
our $ServerAddr       = '127.0.0.1';
our $ServerName       = 'localhost';
our $ServerPort       = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
our $ServerPortForClient = $ENV{TEST_NGINX_CLIENT_PORT} || $ServerPort;
our $RepeatEach       = 1;
our $NoLongString;
our $NoRootLocation   = 0;
our $ConfigPreamble   = '';
our @EnvToNginx;
our @CleanupHandlers;
our @BlockPreprocessors;

# Callbacks installed by Test::Nginx::Socket.
our $RunTestHelper;
our $CheckErrorLog;

our $NginxVersion;
our $NginxRawVersion;

# Valgrind needs nginx in the foreground so that it stays our child.
$DaemonEnabled = 'off' if $UseValgrind;

# A daemonized nginx is orphaned and handed to PID 1, which in a container
# may never reap it.  As a child subreaper (Linux prctl) this process
# inherits it instead and reaps it in kill_process().  Optional: without
# it the harness still works, is_running() treats zombies as gone.
{
    my $nr;
    { package main; eval { require 'syscall.ph' }; }
    if (defined &main::SYS_prctl) {
        $nr = main::SYS_prctl();
    } else {
        require Config;
        my %prctl_nr = (x86_64 => 157, aarch64 => 167);
        ($nr) = map { $prctl_nr{$_} } grep { $Config::Config{archname} =~ /^\Q$_\E/ }
                keys %prctl_nr;
    }
    my $PR_SET_CHILD_SUBREAPER = 36;
    syscall($nr, $PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) if $^O eq 'linux' && defined $nr;
}

srand($$ ^ time);

sub gen_rand_port (;$$);

if ($Randomize) {
    $ServerPort = gen_rand_port(1000);
    defined $ServerPort
        or die "Test::Nginx: no free port found for TEST_NGINX_RANDOMIZE\n";
    $ServerPortForClient = $ServerPort;
}

our $ServRoot = $Randomize
    ? File::Spec->rel2abs("t/servroot_$ServerPort")
    : ($ENV{TEST_NGINX_SERVROOT} || $ENV{TEST_NGINX_SERVER_ROOT_DIR}
       || File::Spec->rel2abs('t/servroot'));
$ServRoot = File::Spec->rel2abs($ServRoot);
$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;

our $LogDir     = "$ServRoot/logs";
our $ErrLogFile = "$LogDir/error.log";
our $AccLogFile = "$LogDir/access.log";
our $StderrFile = "$LogDir/nginx.stderr";
our $HtmlDir    = "$ServRoot/html";
our $ConfDir    = "$ServRoot/conf";
our $ConfFile   = "$ConfDir/nginx.conf";
our $PidFile    = "$LogDir/nginx.pid";
$ENV{TEST_NGINX_HTML_DIR} //= $HtmlDir;

our $ErrLogFilePos = 0;
our $KeepServRoot;        # a failure to inspect happened
our $PrevConfig;
# The block that wrote $PrevConfig and its random ports: under valgrind a
# block without --- config restarts nginx with that block's whole
# configuration (http_config, main_config, user files too).
our $PrevConfigBlock;
our $PrevRandPorts;
our $ChildPid;            # nginx run in the foreground (valgrind mode)
our $InSubprocess;
our $TotalConnectingTimeouts = 0;

sub sleep_time { $TestNginxSleep }
sub verbose { $Verbose }
sub no_long_string () { $NoLongString = 1 }
sub no_shuffle () { $NoShuffle = 1 }
sub no_root_location () { $NoRootLocation = 1 }
sub no_nginx_manager () { $NoNginxManager = 1 }
sub check_accum_error_log () { $CheckAccumErrLog = 1 }
sub config_preamble ($) { $ConfigPreamble = shift }
sub master_on () { $MasterProcessEnabled = 'on' }
sub master_off () { $MasterProcessEnabled = 'off' }
sub html_dir () { $HtmlDir }
sub server_root () { $ServRoot }
sub add_cleanup_handler ($) { unshift @CleanupHandlers, shift }
sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }

sub master_process_enabled (@) {
    return $MasterProcessEnabled unless @_;
    $MasterProcessEnabled = shift() ? 'on' : 'off';
}

# Getter/setter helpers: with an argument they set, without they return.
sub timeout (@)            { @_ ? ($Timeout = shift) : $Timeout }
sub workers (@)            { @_ ? ($Workers = shift) : $Workers }
sub worker_connections (@) { @_ ? ($WorkerConnections = shift) : $WorkerConnections }
sub log_level (@)          { @_ ? ($LogLevel = shift) : $LogLevel }
sub repeat_each (@)        { @_ ? ($RepeatEach = shift) : $RepeatEach }
sub server_addr (@)        { @_ ? ($ServerAddr = shift) : $ServerAddr }
sub server_name (@)        { @_ ? ($ServerName = shift) : $ServerName }
sub server_port (@)        { @_ ? ($ServerPort = shift) : $ServerPort }
sub server_port_for_client (@) {
    @_ ? ($ServerPortForClient = shift) : $ServerPortForClient;
}

sub env_to_nginx (@) {
    croak "env_to_nginx: no arguments specified" unless @_;
    for my $v (@_) {
        croak "env_to_nginx: bad argument value: $v\n"
            if $v !~ /^[A-Za-z_]/ || $v =~ /\n/;
        push @EnvToNginx, $v;
    }
}

# Compares strings (or matches a Regexp) with Test::LongString when it is
# installed and no_long_string() was not called, else with Test::More.
my $HaveLongString = eval { require Test::LongString; 1 };

sub is_str (@) {
    my ($got, $expected, $desc) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    if (ref $expected && ref $expected eq 'Regexp') {
        return Test::More::like($got, $expected, $desc);
    }
    if (!$NoLongString && $HaveLongString) {
        return Test::LongString::is_string($got, $expected, $desc);
    }
    return Test::More::is($got, $expected, $desc);
}

sub parse_time ($) {
    my $tm = shift;
    return undef unless defined $tm;
    $tm =~ s/^\s+|\s+$//g;
    if ($tm =~ s/([^_a-zA-Z])ms$/$1/) {
        $tm = $tm / 1000;
    } else {
        $tm =~ s/([^_a-zA-Z])s$/$1/;
    }
    return $tm;
}

sub trim ($) {
    my $s = shift;
    return undef unless defined $s;
    $s =~ s/^\s+|\s+$//g;
    $s =~ s/\n/ /gs;
    $s =~ s/\s{2,}/ /gs;
    return $s;
}

sub show_all_chars ($) {
    my $s = shift;
    $s =~ s/\n/\\n/gs;
    $s =~ s/\r/\\r/gs;
    $s =~ s/\t/\\t/gs;
    return $s;
}

# "Name: value" lines to an ordered list of [name, value]; "!Name" gives
# value undef, meaning "must be absent".
sub parse_headers ($) {
    my $s = shift;
    my @headers;
    for my $line (split /\n/, $s // '') {
        $line =~ s/^\s+|\s+$//g;
        next if $line eq '';
        if ($line =~ s/^!\s*//) {
            push @headers, [$line, undef];
        } else {
            my ($key, $val) = split /\s*:\s*/, $line, 2;
            push @headers, [$key, $val // ''];
        }
    }
    return \@headers;
}

sub bail_out (@) {
    cleanup();
    Test::More::BAIL_OUT(join '', @_);
}

# ---- processes -----------------------------------------------------------

# A daemonized nginx is not our child; under a PID 1 that does not reap,
# it lingers as a zombie after exiting, which kill(0) still reports alive.
sub is_running ($) {
    my $pid = shift;
    return 0 unless $pid && kill(0, $pid);
    if (open my $st, '<', "/proc/$pid/stat") {
        my $line = <$st>;
        close $st;
        return 0 if defined $line && $line =~ /^\d+ \(.*\) Z/s;
    }
    return 1;
}

sub get_pid_from_pidfile ($) {
    my $name = shift;
    open my $in, '<', $PidFile or return undef;
    my $pid = do { local $/; <$in> };
    close $in;
    return undef unless defined $pid;
    $pid =~ s/\s+//g;
    return $pid =~ /^\d+$/ ? $pid : undef;
}

# QUIT (graceful), wait, then KILL the process (its group when it leads
# one: a daemonized master leads the group of its workers).
sub kill_process ($$) {
    my ($pid, $name) = @_;
    return unless is_running($pid);
    kill(SIGQUIT, $pid);
    my $deadline = time + ($Timeout > 5 ? $Timeout : 5);
    while (is_running($pid) && time < $deadline) {
        waitpid($pid, WNOHANG);
        sleep 0.02;
    }
    if (is_running($pid)) {
        warn "WARNING: $name - nginx $pid did not quit; killing it\n";
        my $pgrp = getpgrp($pid);
        kill(SIGKILL, (defined $pgrp && $pgrp == $pid) ? -$pid : $pid);
        my $end = time + 2;
        while (is_running($pid) && time < $end) {
            waitpid($pid, WNOHANG);
            sleep 0.02;
        }
    }
    waitpid($pid, WNOHANG);
}

our $ValgrindBlockName;

# The nginx started for the current block, and that block's name: an nginx
# that is gone before the harness stops it crashed or exited on its own,
# which fails that block (the real harness does not notice).
our $NginxPid;
our $NginxBlockName;

sub nginx_gone_diag () {
    my $log = file_tail($ErrLogFile, 15);
    return "nginx (pid $NginxPid) is not running any more; the end of "
         . "$ErrLogFile:\n$log";
}

sub stop_nginx ($) {
    my $name = shift;
    my $pid = get_pid_from_pidfile($name);
    $pid = $ChildPid if !defined $pid && defined $ChildPid;
    # The pid file can vanish under us (make clean during a run).
    $pid = $NginxPid if !defined $pid && defined $NginxPid && is_running($NginxPid);
    if (defined $NginxPid && !is_running($NginxPid) && !defined $ChildPid) {
        Test::More::fail(($NginxBlockName // $name)
                         . " - nginx exited before the end of the block");
        Test::More::diag(nginx_gone_diag());
        waitpid($NginxPid, WNOHANG);
    }
    undef $NginxPid;
    if (defined $pid) {
        kill_process($pid, $name);
    }
    if (defined $ChildPid) {
        if (is_running($ChildPid)) {
            kill(SIGKILL, -$ChildPid);
        }
        waitpid($ChildPid, 0);
        undef $ChildPid;
        check_valgrind_log($ValgrindBlockName // $name);
    }
    unlink $PidFile if -f $PidFile;
}

sub cleanup () {
    for my $hdl (@CleanupHandlers) {
        $hdl->();
    }
    if (defined $ChildPid) {
        stop_nginx('cleanup');
    }
}

# ---- server root and nginx.conf -------------------------------------------

sub setup_server_root () {
    if (-d $ServRoot) {
        # Remove only what the harness creates, so that a mistaken
        # TEST_NGINX_SERVROOT cannot wipe unrelated data.
        remove_tree($ConfDir, $HtmlDir, $LogDir, glob("$ServRoot/*_temp"),
                    glob("$ServRoot/*_cache"));
    } else {
        make_path($ServRoot) or bail_out("cannot create $ServRoot: $!");
    }
    for my $dir ($LogDir, $HtmlDir, $ConfDir) {
        mkdir $dir or bail_out("cannot create $dir: $!");
    }
    open my $out, '>', "$HtmlDir/index.html"
        or bail_out("cannot write $HtmlDir/index.html: $!");
    print $out '<html><head><title>It works!</title></head>'
        . '<body>It works!</body></html>';
    close $out;
}

sub gen_rand_port (;$$) {
    my ($tries, $used) = @_;
    $tries //= 1000;
    $used //= {};
    for (1 .. $tries) {
        my $port = int(rand 63550) + 1985;
        next if $used->{$port};
        my $sock = IO::Socket::INET->new(LocalAddr => $ServerAddr,
                                         LocalPort => $port, Proto => 'tcp',
                                         Listen => 1);
        if ($sock) {
            close $sock;
            return $port;
        }
    }
    return undef;
}

# Replaces $TEST_NGINX_FOO with $ENV{TEST_NGINX_FOO}; an undefined variable
# aborts the run.  $TEST_NGINX_RAND_PORT_N gives a free port, the same one
# for the same N within a block.
sub expand_env_in_text ($$$) {
    my ($text, $name, $rand_ports) = @_;
    return undef unless defined $text;
    $rand_ports //= {};
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        my $var = $1;
        my $val;
        if ($var =~ /^TEST_NGINX_RAND_PORT_[0-9]+$/) {
            if (!defined $rand_ports->{$var}) {
                my %used = ($ServerPort => 1, map { $_ => 1 } values %$rand_ports);
                $rand_ports->{$var} = gen_rand_port(1000, \%used)
                    // bail_out("$name - no free port for \$$var");
            }
            $val = $rand_ports->{$var};
        } else {
            defined $ENV{$var}
                or bail_out("$name - No environment $var defined.\n");
            $val = $ENV{$var};
        }
        $val;
    }ge;
    return $text;
}

sub write_user_files ($$) {
    my ($block, $rand_ports) = @_;
    my $name = $block->name;
    my $files = scalar $block->user_files;
    return unless $files;
    if (!ref $files) {
        my @list;
        my ($fname, $body, $date);
        for my $line (split /^/, $files) {
            if ($line =~ /^>>> (\S+)(?:\s+(.+))?/) {
                push @list, [$fname, $body, $date] if defined $fname;
                ($fname, $date, $body) = ($1, $2, undef);
            } else {
                $body .= $line;
            }
        }
        push @list, [$fname, $body, $date] if defined $fname;
        $files = \@list;
    } elsif (ref $files ne 'ARRAY') {
        bail_out("$name - --- user_files must be text or an ARRAY");
    }
    for my $file (@$files) {
        my ($fname, $body, $date) = @$file;
        my $path = $fname =~ m{^/} ? $fname : "$HtmlDir/$fname";
        if ($path =~ m{(.*)/} && !-d $1) {
            make_path($1) or bail_out("$name - cannot create directory $1");
        }
        $body = expand_env_in_text($body // '', $name, $rand_ports);
        open my $out, '>', $path or bail_out("$name - cannot write $path: $!");
        binmode $out;
        print $out $body;
        close $out;
        if ($date) {
            system("TZ=GMT touch -t '$date' '$path'") == 0
                or bail_out("$name - cannot set the date of $path");
        }
    }
}

sub use_http2 ($) {
    my $block = shift;
    if (defined scalar $block->http2) {
        bail_out("cannot use --- http2 with --- raw_request")
            if defined scalar $block->raw_request;
        bail_out("cannot use --- http2 with --- pipelined_requests")
            if defined scalar $block->pipelined_requests;
        return 1;
    }
    return undef unless $UseHttp2;
    return undef if defined scalar $block->raw_request
                 || defined scalar $block->pipelined_requests;
    my $req = scalar $block->request;
    return undef unless defined $req;
    return undef if !ref $req && $req =~ m{HTTP/1\.0};
    return 1;
}

# Temp directories default to Debian's /var/lib/nginx; keep them in the
# server root unless the test sets them itself.
my @TempPathDirectives = qw(client_body_temp_path proxy_temp_path
    fastcgi_temp_path uwsgi_temp_path scgi_temp_path);

sub write_config_file ($$$) {
    my ($block, $config, $rand_ports) = @_;
    my $name = $block->name;

    my $http_config = expand_env_in_text(scalar $block->http_config, $name,
                                         $rand_ports) // '';
    my $main_config = expand_env_in_text(scalar $block->main_config, $name,
                                         $rand_ports) // '';
    my $post_main_config = expand_env_in_text(scalar $block->post_main_config,
                                              $name, $rand_ports) // '';
    $config //= '';
    my $server_name = scalar $block->server_name;
    $server_name = $ServerName unless defined $server_name;
    my $log_level = scalar $block->log_level;
    $log_level = $LogLevel unless defined $log_level && $log_level ne '';
    $log_level =~ s/^\s+|\s+$//g;

    # load_module must precede any directive of the module it loads.
    my $modules = '';
    if ($LoadModules) {
        $modules = join '', map { "load_module $_;\n" }
                            grep { $_ ne '' } split /\s+/, $LoadModules;
    }

    my $env = '';
    for my $v (@EnvToNginx) {
        my $quoted = $v =~ /\s/ ? "'$v'" : $v;
        $env .= "env $quoted;\n";
    }

    my $temp_paths = '';
    for my $d (@TempPathDirectives) {
        next if "$http_config\n$config" =~ /\b\Q$d\E\b/;
        (my $dir = $d) =~ s/_path$//;
        $temp_paths .= "    $d $ServRoot/$dir;\n";
    }

    my $listen_opts = use_http2($block) ? ' http2' : '';
    my $root_location = $NoRootLocation ? '' : <<_EOC_;
        location / {
            root $HtmlDir;
            index index.html index.htm;
        }
_EOC_
    my $user = $> == 0 ? "user root;\n" : '';

    open my $out, '>', $ConfFile or bail_out("cannot write $ConfFile: $!");
    print $out <<_EOC_;
${modules}worker_processes  $Workers;
daemon $DaemonEnabled;
master_process $MasterProcessEnabled;
error_log $ErrLogFile $log_level;
pid       $PidFile;
env LD_PRELOAD;
env LD_LIBRARY_PATH;
env ASAN_OPTIONS;
env UBSAN_OPTIONS;
$env$user
$main_config

http {
    access_log $AccLogFile;
    default_type text/plain;
    keepalive_timeout  68;
$temp_paths
$http_config

    server {
        listen          $ServerPort$listen_opts;
        server_name     '$server_name';

        client_max_body_size 30M;

        # Begin preamble config...
$ConfigPreamble
        # End preamble config...

        # Begin test case config...
$config
        # End test case config.

$root_location    }
}

$post_main_config

events {
    accept_mutex off;
    worker_connections  $WorkerConnections;
}
_EOC_
    close $out or bail_out("cannot write $ConfFile: $!");
}

sub get_canon_version (@) {
    sprintf "%d.%03d%03d", $_[0], $_[1], $_[2];
}

sub get_nginx_version () {
    my $out = `$NginxBinary -V 2>&1`;
    if (!defined $out || $? != 0) {
        bail_out("cannot run \"$NginxBinary -V\" (TEST_NGINX_BINARY): "
                 . ($out // $!));
    }
    if ($out =~ m{(?:nginx|openresty)[^/]*/(\d+)\.(\d+)\.(\d+)}s) {
        $NginxRawVersion = "$1.$2.$3";
        return get_canon_version($1, $2, $3);
    }
    bail_out("cannot parse the output of \"$NginxBinary -V\": $out");
}

# ---- error log -------------------------------------------------------------

# Lines logged since the previous call within this block (all lines of the
# block with check_accum_error_log()).  Waits a little first: nginx logs
# some things after it has closed the connection.
sub error_log_data () {
    sleep $TestNginxSleep * 3;
    my @lines;
    if (open my $in, '<', $ErrLogFile) {
        seek $in, $ErrLogFilePos, 0 if !$CheckAccumErrLog && $ErrLogFilePos > 0;
        @lines = <$in>;
        $ErrLogFilePos = tell($in) unless $CheckAccumErrLog;
        close $in;
    }
    return \@lines;
}

sub access_log_data () {
    sleep $TestNginxSleep * 3;
    open my $in, '<', $AccLogFile or return [];
    my @lines = <$in>;
    close $in;
    return \@lines;
}

sub file_tail ($$) {
    my ($file, $n) = @_;
    open my $in, '<', $file or return '';
    my @lines = <$in>;
    close $in;
    splice @lines, 0, @lines - $n if @lines > $n;
    return join '', @lines;
}

sub check_valgrind_log ($) {
    my $name = shift;
    my @logs = glob("$LogDir/valgrind.*.log");
    my $report = '';
    for my $log (@logs) {
        open my $in, '<', $log or next;
        local $/;
        my $text = <$in>;
        close $in;
        $report .= $text if defined $text && $text =~ /\S/;
        unlink $log;
    }
    if ($report ne '') {
        Test::More::fail("$name - valgrind reported errors");
        Test::More::diag($report);
    }
}

# ---- running blocks ----------------------------------------------------------

sub nginx_command () {
    my $cmd = "$NginxBinary -p $ServRoot/ -c $ConfFile";
    # -e (nginx >= 1.19.5) sends startup errors to error.log too, as a
    # build whose default error log is logs/error.log would.
    $cmd .= " -e $ErrLogFile"
        if defined $NginxVersion && $NginxVersion >= 1.019005;
    if ($UseValgrind) {
        my $opts = $UseValgrind =~ /^\d+$/
            ? '--tool=memcheck --leak-check=full --show-possibly-lost=no'
            : $UseValgrind;
        # nginx's own exit-time leaks, then the project's if it has any.
        (my $own = $INC{'Test/Nginx/Util.pm'}) =~ s{Util\.pm$}{valgrind.suppress};
        $opts .= " --suppressions=$own" if -f $own;
        $opts .= ' --suppressions=valgrind.suppress' if -f 'valgrind.suppress';
        $cmd = "valgrind -q --num-callers=100 $opts"
             . " --log-file=$LogDir/valgrind.%p.log $cmd";
    }
    return $cmd;
}

sub run_tests () {
    $NginxVersion = get_nginx_version();
    $ENV{TEST_NGINX_SERVER_PORT} //= $ServerPort;

    my @blocks = Test::Base::blocks();
    @blocks = shuffle @blocks unless $NoShuffle;
    for my $block (@blocks) {
        for my $hdl (@BlockPreprocessors) {
            $hdl->($block);
        }
        $block->set_value("name", $0 . " " . $block->name);
        run_test($block);
    }
    cleanup();
}

sub skip_spec ($) {
    my $block = shift;
    my $name = $block->name;
    my $spec = scalar $block->skip_eval;
    if (defined $spec) {
        $spec =~ /^\s*(\d+)\s*:\s*(.*)/s
            or bail_out("$name - invalid --- skip_eval spec: $spec");
        my ($n, $code) = ($1, $2);
        my $skip = eval $code;
        bail_out("$name - skip_eval - cannot eval \"$code\": $@") if $@;
        return ($n, "skip_eval") if $skip;
    }
    $spec = scalar $block->skip_nginx;
    if (defined $spec) {
        $spec =~ /^\s*(\d+)\s*:\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)(?:\s*:\s*(.*))?\s*$/
            or bail_out("$name - invalid --- skip_nginx spec: $spec");
        my ($n, $op, $reason) = ($1, $2, $6);
        my $ver = get_canon_version($3, $4, $5);
        return ($n, $reason || "nginx version $op $3.$4.$5")
            if eval "$NginxVersion $op $ver";
    }
    return;
}

# Waits until nginx under valgrind is ready for the block: its pid file
# exists (nginx writes it after its listening sockets are open) and its
# event loop answers on the server port.  Valgrind makes startup take tens
# of seconds (loading shared libraries, the modules' init_process work
# before the event loop runs), so the limit grows with TEST_NGINX_TIMEOUT;
# a request sent before the port is open gets "Connection refused", and
# one sent before the event loop runs waits, eating into the block's
# client timeout.  The probe is a malformed request line, which nginx
# refuses (400, logged at info level) before any location or module sees
# it; on an HTTP/2-only listener it closes the connection instead.
sub wait_for_valgrind_nginx ($$) {
    my ($name, $pid) = @_;
    my $limit = $Timeout > 30 ? 2 * $Timeout : 60;
    my $deadline = time + $limit;
    my $exited = sub {
        return 0 unless waitpid($pid, WNOHANG) == $pid;
        undef $ChildPid;
        bail_out("$name - nginx under valgrind exited at startup:\n"
                 . file_tail($StderrFile, 20) . file_tail($ErrLogFile, 20));
    };
    while (!-f $PidFile) {
        $exited->();
        if (time > $deadline) {
            $KeepServRoot = 1;
            bail_out("$name - nginx under valgrind wrote no pid file within "
                     . "$limit s:\n" . file_tail($ErrLogFile, 20));
        }
        sleep 0.05;
    }
    while (1) {
        my $sock = IO::Socket::INET->new(PeerAddr => $ServerAddr,
                                         PeerPort => $ServerPort,
                                         Proto => 'tcp', Timeout => 1);
        if ($sock) {
            my $answered;
            if (syswrite($sock, "PROBE\r\n\r\n")) {
                my $sel = IO::Select->new($sock);
                until ($answered || time > $deadline) {
                    # data or EOF: either is nginx's event loop at work
                    $answered = 1 if $sel->can_read(0.5);
                    $exited->();
                }
            }
            close $sock;
            return if $answered;
        }
        $exited->();
        if (time > $deadline) {
            $KeepServRoot = 1;
            bail_out("$name - nginx under valgrind does not accept on port "
                     . "$ServerPort within $limit s: $@\n"
                     . file_tail($ErrLogFile, 20));
        }
        sleep 0.1;
    }
}

# $conf_block (default $block) is the block whose configuration sections and
# user files are written: a block without --- config restarted under
# valgrind uses the previous block's.
sub start_nginx ($$$;$) {
    my ($block, $config, $rand_ports, $conf_block) = @_;
    my $name = $block->name;
    $conf_block //= $block;

    my $running = get_pid_from_pidfile($name);
    stop_nginx($name) if defined $running || defined $ChildPid;

    setup_server_root();
    write_user_files($conf_block, $rand_ports);
    write_user_files($block, $rand_ports) if $conf_block != $block;
    write_config_file($conf_block, $config, $rand_ports);

    my $cmd = nginx_command();
    warn "$name - $cmd\n" if $Verbose;

    if ($UseValgrind) {
        my $pid = fork();
        bail_out("$name - fork() failed: $!") unless defined $pid;
        if ($pid == 0) {
            setpgrp(0, 0);
            $InSubprocess = 1;
            Test::More->builder->no_ending(1);
            open STDOUT, '>', '/dev/null';
            open STDERR, '>', $StderrFile;
            exec "exec $cmd" or POSIX::_exit(127);
        }
        $ChildPid = $pid;
        $ValgrindBlockName = $name;
        $NginxBlockName = $name;
        wait_for_valgrind_nginx($name, $pid);
        return 1;
    }

    my $waited = 0;
    while (1) {
        system("$cmd >/dev/null 2>$StderrFile");
        my $status = $?;
        if ($status == 0) {
            # The daemon writes its pid file once it runs.
            my $deadline = time + 5;
            until (defined($NginxPid = get_pid_from_pidfile($name))
                   || time > $deadline)
            {
                sleep 0.01;
            }
            $NginxBlockName = $name;
            return 1;
        }
        my $stderr = file_tail($StderrFile, 20);
        # The previous server may still hold the port for a moment.
        if ($stderr =~ /Address already in use/ && $waited < 10) {
            sleep 0.2;
            $waited += 0.2;
            next;
        }
        # Once nginx has parsed its configuration, its stderr is the error
        # log: a module failing to initialise only complains there.  TAP
        # shows only the first line of a bail-out reason: put nginx's own
        # complaint there, the rest in diagnostics.
        my $errlog = file_tail($ErrLogFile, 20);
        Test::More::diag("nginx stderr:\n$stderr") if $stderr ne '';
        Test::More::diag("end of $ErrLogFile:\n$errlog") if $errlog ne '';
        my $why;
        for my $text ($stderr, $errlog) {
            ($why) = $text =~ /^(.*\[(?:emerg|alert|crit)\].*)$/m;
            ($why) = $text =~ /^(.*\[error\].*)$/m unless defined $why;
            last if defined $why;
        }
        ($why) = "$stderr$errlog" =~ /(\S.*)\s*\z/ unless defined $why;
        $KeepServRoot = 1;
        bail_out("$name - Cannot start nginx using command \"$cmd\" "
                 . "(status code $status): " . ($why // 'no message'));
    }
}

sub run_must_die ($$$) {
    my ($block, $config, $rand_ports) = @_;
    my $name = $block->name;
    my $must_die = scalar $block->must_die;
    $must_die =~ s/^\s+|\s+$//g;
    # nginx must run (and fail) in the foreground of system(), never
    # under valgrind.
    local $UseValgrind = undef;
    local $DaemonEnabled = 'on';

    for my $i (0 .. $RepeatEach - 1) {
        my $running = get_pid_from_pidfile($name);
        stop_nginx($name) if defined $running || defined $ChildPid;
        setup_server_root();
        write_user_files($block, $rand_ports);
        write_config_file($block, $config, $rand_ports);
        my $cmd = nginx_command();
        system("$cmd >/dev/null 2>$StderrFile");
        my $status = $?;
        my $exit_code = $status >> 8;
        if ($status == -1) {
            Test::More::fail("$name - failed to execute the nginx command line");
        } elsif ($status & 128) {
            Test::More::fail("$name - nginx core dumped");
        } elsif (looks_like_number($must_die)) {
            Test::More::is($must_die, $exit_code,
                           "$name - die with the expected exit code");
        } else {
            Test::More::isnt($status, 0, "$name - die as expected");
        }
        $ErrLogFilePos = 0;
        $CheckErrorLog->($block, undef, 0, $i, 0);
        if ($status == 0) {
            warn "WARNING: $name - nginx must die but it does not; killing it\n";
            for (1 .. 100) {
                last if -f $PidFile;
                sleep $TestNginxSleep;
            }
            stop_nginx($name);
        }
    }
}

sub run_test ($) {
    my $block = shift;
    return if defined scalar $block->SKIP;
    my $name = $block->name;

    my $rand_ports = {};
    my $config = expand_env_in_text(scalar $block->config, $name, $rand_ports);

    if (defined scalar $block->must_die) {
        run_must_die($block, $config, $rand_ports);
        return;
    }

    my ($tests_to_skip, $skip_reason) = skip_spec($block);
    my ($should_todo, $todo_reason);
    my $todo = scalar $block->todo;
    if (defined $todo) {
        $todo =~ /^\s*(\d+)\s*:\s*(.*)/s
            or bail_out("$name - invalid --- todo spec: $todo");
        ($should_todo, $tests_to_skip, $todo_reason) = (1, $1, $2);
    }

    if (!$NoNginxManager && !defined $tests_to_skip) {
        if (defined $config) {
            start_nginx($block, $config, $rand_ports);
            $PrevConfig = $config;
            $PrevConfigBlock = $block;
            $PrevRandPorts = $rand_ports;
            $ErrLogFilePos = 0;
            sleep $TestNginxSleep;
        } elsif (defined $PrevConfig && $UseValgrind) {
            # Under valgrind nginx is stopped after every block (its leaks
            # are reported at exit): start it again with the previous
            # block's configuration, as the real Test::Nginx does.
            start_nginx($block, $PrevConfig, $PrevRandPorts, $PrevConfigBlock);
            $ErrLogFilePos = 0;
            sleep $TestNginxSleep;
            # The configuring block's --- init prepared that server (a
            # readiness wait, say): run it for the new one too, before this
            # block's own init (which may already send requests), with
            # $block meaning the configuring block as it did there.
            my $init = scalar $PrevConfigBlock->init;
            if (defined $init) {
                my $block = $PrevConfigBlock;
                eval $init;
                bail_out("$name - init (of the previous block) failed: $@")
                    if $@;
            }
        } elsif (defined $PrevConfig) {
            # No --- config: reuse the server of the previous block, but
            # check only what this block logs.
            $ErrLogFilePos = -s $ErrLogFile || 0;
            $NginxBlockName = $name;
        } else {
            bail_out("$name - No '--- config' section specified and could "
                     . "not get previous one.");
        }
    } elsif (!defined $tests_to_skip) {
        $ErrLogFilePos = -s $ErrLogFile || 0;
    }

    if (defined(my $init = scalar $block->init)) {
        eval $init;
        bail_out("$name - init failed: $@") if $@;
    }

    for my $i (0 .. $RepeatEach - 1) {
        write_user_files($block, $rand_ports) if $i > 0;
        if (defined $tests_to_skip && !$should_todo) {
            SKIP: {
                Test::More::skip("$name - $skip_reason", $tests_to_skip);
            }
        } elsif ($should_todo) {
            TODO: {
                Test::More::todo_skip("$name - $todo_reason", $tests_to_skip);
            }
        } else {
            $RunTestHelper->($block, 0, $i);
        }
    }

    # Valgrind reports leaks at exit: stop nginx after each block.
    stop_nginx($name) if $UseValgrind && !$NoNginxManager;
}

# The daemonized nginx is in its own session and does not see a Ctrl-C
# meant for the test run: die through END so that it is stopped too.
my %SignalNumber = (HUP => 1, INT => 2, TERM => 15);
for my $sig (sort keys %SignalNumber) {
    $SIG{$sig} = sub { warn "caught SIG$sig, stopping nginx\n"; exit 128 + $SignalNumber{$sig} }
        if !defined $SIG{$sig} || $SIG{$sig} eq 'DEFAULT' || $SIG{$sig} eq '';
}

END {
    return if $InSubprocess;
    my $exit = $?;
    cleanup();
    if (!$ENV{TEST_NGINX_NO_CLEAN} || $UseValgrind) {
        stop_nginx('END') if -f $PidFile || defined $NginxPid;
    }
    # A random server root is removed, unless something failed: then its
    # logs are what one wants to read.
    if ($Randomize && $ServRoot =~ m{/t/servroot_\d+$} && -d $ServRoot
        && !$ENV{TEST_NGINX_NO_CLEAN})
    {
        my $tb = Test::More->builder;
        if ($KeepServRoot || grep { !$_ } $tb->summary) {
            Test::More::diag("server root kept for inspection: $ServRoot");
        } else {
            remove_tree($ServRoot);
        }
    }
    $? = $exit;
}

1;

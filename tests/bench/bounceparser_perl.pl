#!/usr/bin/perl
# Run Mail::DeliveryStatus::BounceParser (Debian: libmail-deliverystatus-bounceparser-perl)
# on each file named on the command line; print "file<TAB>address<TAB>action<TAB>status<TAB>
# std_reason" per reported recipient. Used by bench_bounces2.py; decides nothing itself.
use strict;
use warnings;
use Mail::DeliveryStatus::BounceParser;

for my $file (@ARGV) {
    open my $fh, '<', $file or die "$file: $!";
    local $/;
    my $text = <$fh>;
    close $fh;
    my $bounce = eval { Mail::DeliveryStatus::BounceParser->new($text) };
    next unless $bounce && $bounce->is_bounce;
    for my $report ($bounce->reports) {
        my $address = $report->get('email') or next;
        my @row = map { my $v = $report->get($_) // ''; $v =~ s/\s+/ /g; $v }
          qw(Action Status std_reason);
        print join("\t", $file, lc $address, @row), "\n";
    }
}
